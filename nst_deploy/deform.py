"""Deformable style transfer, library core (Kim et al. 2020, "Deformable Style Transfer").

Deformable style transfer (DST) matches keypoints between the content and the style image and warps
the stylized image with a thin-plate spline (TPS) that moves each content keypoint ``p_i`` by
``theta_i`` towards its style keypoint ``p'_i``. This module holds the pieces:

* the thin-plate spline (:func:`tps_fit`, :func:`tps_eval`), the backward sampling grid of the warp
  (:func:`tps_grid`), the warp itself (:func:`warp`), the flow regularizer (:func:`flow_tv`) and the
  keypoint term (:func:`warp_loss`);
* the keypoints' shape check (:func:`check_points`) and their error (:class:`KeypointError`).

Matching, reading and drawing keypoints live in :mod:`nst_deploy.keypoints`.

Coordinates are normalized ``(x, y)`` in ``[-1, 1]`` per image, as
``torch.nn.functional.grid_sample(..., align_corners=False)`` reads them: ``(-1, -1)`` is the
top-left corner of the top-left pixel, ``(1, 1)`` the bottom-right corner of the bottom-right one,
so the centre of pixel column ``j`` of a ``W`` wide image is ``x = (2 j + 1) / W - 1``. Point sets
are float tensors of shape ``(k, 2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import NSTError

__all__ = [
    "KeypointError",
    "check_points",
    "flow_tv",
    "identity_grid",
    "tps_eval",
    "tps_fit",
    "tps_grid",
    "warp",
    "warp_loss",
]


class KeypointError(NSTError):
    """Keypoints cannot be read, are malformed, or too few of them can be found."""


# ------------------------------------------------------------------------------- thin-plate spline
def _phi(d2: torch.Tensor) -> torch.Tensor:
    """The TPS kernel ``phi(r) = r^2 log r^2`` of squared distances ``d2``, with ``phi(0) = 0``.

    ``d2`` is clamped inside the log only, so the value at 0 is exactly 0 and every gradient is
    finite: ``d phi / d u = 2 (u - s)(log r^2 + 1)`` tends to 0 as ``u -> s``.
    """
    return d2 * torch.log(d2.clamp_min(1e-30 if d2.dtype == torch.float64 else 1e-20))


def _sqdist(u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Squared distances ``|u_i - s_j|^2``, shape ``(n, k)``, with gradients that are finite at 0."""
    return (u[:, None, :] - s[None, :, :]).square().sum(-1)


def check_points(name: str, pts: torch.Tensor) -> None:
    """Raise :class:`KeypointError` (naming ``name``) unless ``pts`` is a tensor of shape ``(k, 2)``."""
    if not isinstance(pts, torch.Tensor) or pts.dim() != 2 or pts.shape[1] != 2:
        shape = tuple(pts.shape) if isinstance(pts, torch.Tensor) else type(pts).__name__
        raise KeypointError(f"{name} must be a float tensor of shape (k, 2), got {shape}")


def tps_fit(src: torch.Tensor, dst: torch.Tensor, ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the thin-plate spline ``f`` with ``f(src_i) ~ dst_i``.

    The spline is ``f(u) = a^T [1, u] + sum_i w_i phi(|u - src_i|)`` with
    ``phi(r) = r^2 log r^2`` (``phi(0) = 0``). With ``K_ij = phi(|src_i - src_j|)``,
    ``P = [1, src]`` (``k x 3``) and ``A0`` the identity map's affine part (``[[0, 0], [1, 0], [0, 1]]``),
    ``(w, a)`` solve the regularized TPS system

        ``[[K + ridge I, P], [P^T, -ridge D]] [w; a] = [dst; -ridge D A0]``,  ``D = diag(0, 1, 1)``

    with :func:`torch.linalg.solve`. ``ridge I`` on the kernel block turns exact interpolation into a
    smoothing spline (duplicate points no longer make the system singular). ``-ridge D`` on the
    affine block relaxes the side condition ``P^T w = 0`` on the linear rows to
    ``P^T w = ridge D (a - A0)``: the part of the linear map that the points leave undetermined
    (``k < 3``, collinear or coincident points) is taken from the identity, so the system is
    solvable for any point set (one point gives a translation). Translations are reproduced exactly
    for any ridge; other affine maps up to ``O(ridge)``; ``ridge -> 0`` gives the exact
    interpolating TPS. Differentiable in ``src`` and ``dst``.

    Args:
        src: ``(k, 2)`` control points.
        dst: ``(k, 2)`` their images.
        ridge: regularization (``>= 0``; 0 gives the exact TPS, which needs ``k >= 3`` distinct,
            non-collinear points).

    Raises:
        KeypointError: point sets of the wrong shape or of different lengths.

    Returns:
        ``(w, a)``: ``(k, 2)`` kernel weights and ``(3, 2)`` affine part.
    """
    check_points("src", src)
    check_points("dst", dst)
    if src.shape[0] != dst.shape[0] or src.shape[0] < 1:
        raise KeypointError(f"tps_fit needs as many (>= 1) source as target points, got {len(src)} and {len(dst)}")
    out_dtype = torch.promote_types(src.dtype, dst.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.get_default_dtype()
    # The (k + 3)-square system is solved in float64 (where the device has it): it is small, and
    # float32 loses ~1e-5 on nearly singular point sets.
    dtype = out_dtype if src.device.type == "mps" else torch.float64
    src, dst = src.to(dtype), dst.to(dtype)
    k = src.shape[0]
    kernel = _phi(_sqdist(src, src))
    eye = torch.eye(k, dtype=dtype, device=src.device)
    p = torch.cat([torch.ones(k, 1, dtype=dtype, device=src.device), src], 1)
    d = torch.diag(torch.tensor([0.0, ridge, ridge], dtype=dtype, device=src.device))
    system = torch.cat([torch.cat([kernel + ridge * eye, p], 1), torch.cat([p.t(), -d], 1)], 0)
    a0 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=dtype, device=src.device)
    rhs = torch.cat([dst, -d @ a0], 0)
    sol = torch.linalg.solve(system, rhs).to(out_dtype)
    return sol[:k], sol[k:]


def tps_eval(w: torch.Tensor, a: torch.Tensor, src: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Evaluate a fitted spline at ``pts``: ``f(u) = a^T [1, u] + sum_i w_i phi(|u - src_i|)``.

    Args:
        w, a: from :func:`tps_fit` (``(k, 2)`` and ``(3, 2)``).
        src: the ``(k, 2)`` control points the spline was fitted on.
        pts: ``(n, 2)`` points.

    Returns:
        ``(n, 2)``.
    """
    check_points("pts", pts)
    pts = pts.to(w.dtype)
    ones = torch.ones(pts.shape[0], 1, dtype=w.dtype, device=pts.device)
    return torch.cat([ones, pts], 1) @ a + _phi(_sqdist(pts, src.to(w.dtype))) @ w


def identity_grid(hw: tuple[int, int], *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The identity sampling grid ``(1, H, W, 2)``: pixel centres ``((2 j + 1) / W - 1, (2 i + 1) / H - 1)``."""
    h, w = int(hw[0]), int(hw[1])
    ys = (torch.arange(h, dtype=dtype, device=device) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=dtype, device=device) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None]


def tps_grid(points: torch.Tensor, theta: torch.Tensor, hw: tuple[int, int], ridge: float = 1e-3) -> torch.Tensor:
    """The backward sampling grid of the warp that moves content point ``p_i`` to ``p_i + theta_i``.

    ``grid_sample`` reads, for each output pixel ``y``, the input at ``g(y)``; so ``g`` is the TPS
    fitted from ``dst = points + theta`` to ``src = points`` (``g(p_i + theta_i) ~ p_i``), evaluated
    at every output pixel centre (``align_corners=False``). ``grid_sample(x, grid)`` then puts what
    was at ``p_i`` onto ``p_i + theta_i``. ``theta = 0`` gives the identity grid.

    Args:
        points: ``(k, 2)`` content points (normalized).
        theta: ``(k, 2)`` their displacements (normalized).
        hw: ``(H, W)`` of the output.
        ridge: see :func:`tps_fit`.

    Returns:
        ``(1, H, W, 2)``, differentiable in ``points`` and ``theta``.
    """
    check_points("points", points)
    check_points("theta", theta)
    dtype = torch.promote_types(points.dtype, theta.dtype)
    points, theta = points.to(dtype), theta.to(dtype)
    moved = points + theta
    w, a = tps_fit(moved, points, ridge)
    ident = identity_grid(hw, dtype=dtype, device=points.device)
    return tps_eval(w, a, moved, ident.reshape(-1, 2)).reshape(ident.shape)


def warp(x: torch.Tensor, points: torch.Tensor, theta: torch.Tensor,
         ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images so that what was at ``p_i`` lands on ``p_i + theta_i``.

    ``warped = grid_sample(x, g)`` (bilinear, ``padding_mode="border"``, ``align_corners=False``)
    with ``g = tps_grid(points, theta, (H, W))``.

    Args:
        x: ``(N, C, H, W)`` images.
        points, theta: ``(k, 2)`` content points and displacements (normalized).
        ridge: see :func:`tps_fit`.

    Returns:
        ``(warped, flow)``: the ``(N, C, H, W)`` warped images and the ``(1, H, W, 2)`` flow
        ``g - identity`` (normalized units), differentiable in ``x``, ``points`` and ``theta``.
    """
    if x.dim() != 4:
        raise NSTError(f"warp expects images of shape (N, C, H, W), got {tuple(x.shape)}")
    grid = tps_grid(points.to(x.device), theta.to(x.device), tuple(x.shape[-2:]), ridge)
    dtype = torch.promote_types(x.dtype, grid.dtype)
    x, grid = x.to(dtype), grid.to(dtype)
    warped = F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear",
                           padding_mode="border", align_corners=False)
    flow = grid - identity_grid(tuple(x.shape[-2:]), dtype=dtype, device=x.device)
    return warped, flow


def flow_tv(flow: torch.Tensor) -> torch.Tensor:
    """Size-normalized total variation of a flow ``(N, H, W, 2)`` (normalized units).

    The flow is first expressed in pixels of its own grid (``x`` times ``W / 2``, ``y`` times
    ``H / 2``); then, as :func:`nst_deploy.losses.tv_loss`,

        ``R = (sum (f[i+1, j] - f[i, j])^2 + sum (f[i, j+1] - f[i, j])^2) / (H W)``,

    the mean over pixels of the squared differences between vertical and horizontal neighbours.
    For a given smooth deformation the pixel-unit differences do not depend on the resolution, so
    ``R`` neither grows nor shrinks with the image size; a constant flow gives 0.
    """
    if flow.dim() != 4 or flow.shape[-1] != 2:
        raise NSTError(f"flow_tv expects a flow of shape (N, H, W, 2), got {tuple(flow.shape)}")
    h, w = flow.shape[1], flow.shape[2]
    scale = torch.tensor([w / 2.0, h / 2.0], dtype=flow.dtype, device=flow.device)
    f = flow * scale
    dh = (f[:, 1:] - f[:, :-1]).square().sum()
    dw = (f[:, :, 1:] - f[:, :, :-1]).square().sum()
    return (dh + dw) / (flow.shape[0] * h * w)


def warp_loss(points: torch.Tensor, theta: torch.Tensor, targets: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The keypoint term ``(1/k) sum_i ||(p_i + theta_i) - p'_i||_2``.

    Computed as ``sqrt(||.||^2 + eps)`` so that its gradient is finite (0) where a point sits
    exactly on its target.
    """
    for name, t in (("points", points), ("theta", theta), ("targets", targets)):
        check_points(name, t)
    d = points + theta - targets
    return torch.sqrt(d.square().sum(-1) + eps).mean()
