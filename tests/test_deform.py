"""Deformable style transfer core: thin-plate spline, warp, flow TV, the keypoint term (keypoints: test_keypoints)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nst_deploy.deform import (
    flow_tv,
    identity_grid,
    tps_eval,
    tps_fit,
    tps_grid,
    warp,
    warp_loss,
)

D64 = torch.float64


def _points(k: int, seed: int = 0, dtype=D64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(k, 2, generator=g, dtype=dtype) * 1.6 - 0.8)


@pytest.fixture
def one_thread():
    """Tiny float64 ops (gradcheck) are much faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- thin-plate spline
def test_tps_interpolates_control_points():
    src, dst = _points(7, 0), _points(7, 1)
    w, a = tps_fit(src, dst, ridge=1e-10)
    assert torch.allclose(tps_eval(w, a, src, src), dst, atol=1e-7)
    # with the default ridge it is a smoothing spline: close, not exact
    w, a = tps_fit(src, dst)
    assert (tps_eval(w, a, src, src) - dst).abs().max() < 0.05


def test_tps_reproduces_affine_maps():
    src, pts = _points(6, 2), _points(50, 3)
    m = torch.tensor([[1.1, 0.2], [-0.15, 0.9]], dtype=D64)
    t = torch.tensor([0.05, -0.1], dtype=D64)
    w, a = tps_fit(src, src @ m.T + t, ridge=1e-10)
    assert torch.allclose(tps_eval(w, a, src, pts), pts @ m.T + t, atol=1e-7)
    assert w.abs().max() < 1e-7
    # a translation is reproduced exactly whatever the ridge
    w, a = tps_fit(src, src + t, ridge=1e-2)
    assert torch.allclose(tps_eval(w, a, src, pts), pts + t, atol=1e-10)


def test_tps_gradcheck(one_thread):
    pts = torch.tensor([[-0.5, -0.4], [0.45, -0.35], [0.1, 0.5], [-0.2, 0.15]], dtype=D64)
    theta = (torch.tensor([[0.05, -0.03], [-0.04, 0.06], [0.02, 0.03], [0.06, 0.01]], dtype=D64)
             .requires_grad_())
    query = _points(5, 4)

    def through_eval(th):
        moved = pts + th
        w, a = tps_fit(moved, pts)
        return tps_eval(w, a, moved, query)

    assert torch.autograd.gradcheck(through_eval, (theta,))
    assert torch.autograd.gradcheck(lambda th: tps_grid(pts, th, (5, 6)), (theta,))
    src = pts.clone().requires_grad_()  # in the control points too
    assert torch.autograd.gradcheck(lambda s: tps_eval(*tps_fit(s, pts + 0.05), s, query), (src,))


def test_warp_gradcheck(one_thread):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 2, 6, 7, generator=g, dtype=D64, requires_grad=True)
    pts = torch.tensor([[-0.6, -0.5], [0.55, -0.45], [0.1, 0.6], [-0.3, 0.2]], dtype=D64)
    # a generic displacement: no sampling position lands on a pixel centre (a bilinear kink)
    theta = torch.tensor([[0.071, -0.043], [-0.052, 0.066], [0.037, 0.029], [0.061, 0.013]], dtype=D64,
                         requires_grad=True)
    assert torch.autograd.gradcheck(lambda img, th: warp(img, pts, th)[0], (x, theta))
    assert torch.autograd.gradcheck(lambda th: warp(x.detach(), pts, th)[1], (theta,))


@pytest.mark.parametrize("pts", [
    [[0.2, 0.3]],                                        # k = 1
    [[0.2, 0.3], [-0.4, 0.1]],                           # k = 2
    [[0.1, -0.2]] * 4,                                   # all the same point
    [[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0], [0.8, 0.0]],   # collinear
    [[-0.3, -0.3], [0.1, 0.1], [0.5, 0.5]],             # collinear, diagonal
    [[0.1, 0.1], [0.1, 0.1], [0.5, -0.3], [-0.6, 0.4]],  # a duplicate
], ids=["k1", "k2", "coincident", "collinear", "diagonal", "duplicate"])
def test_degenerate_point_sets_solve(pts):
    pts = torch.tensor(pts)
    theta = torch.linspace(-0.1, 0.1, pts.numel()).view_as(pts)
    w, a = tps_fit(pts, pts + theta)
    assert torch.isfinite(w).all() and torch.isfinite(a).all()
    grid = tps_grid(pts, theta, (8, 9))
    assert torch.isfinite(grid).all()
    assert (tps_grid(pts, torch.zeros_like(pts), (8, 9)) - identity_grid((8, 9))).abs().max() < 1e-5
    # gradients stay finite at coincident points (phi(0) = 0, computed safely)
    th = theta.clone().requires_grad_()
    tps_grid(pts, th, (8, 9)).square().sum().backward()
    assert torch.isfinite(th.grad).all()


def test_one_point_is_a_translation():
    p, t = torch.tensor([[0.2, 0.3]]), torch.tensor([[0.1, -0.05]])
    assert torch.allclose(tps_grid(p, t, (6, 5)), identity_grid((6, 5)) - t, atol=1e-6)


# --------------------------------------------------------------------------------------------- warp
def test_zero_theta_is_identity():
    x = torch.rand(2, 3, 20, 24)
    pts = _points(6, 6, torch.float32)
    out, flow = warp(x, pts, torch.zeros_like(pts))
    assert flow.shape == (1, 20, 24, 2) and flow.abs().max() < 1e-5
    assert (out - x).abs().max() < 1e-4


def test_translation_moves_a_dot():
    h, w = 32, 40
    x = torch.zeros(1, 1, h, w)
    x[0, 0, 12, 15] = 1.0
    pts = torch.tensor([[-0.7, -0.6], [0.6, -0.5], [0.0, 0.1], [-0.5, 0.7], [0.7, 0.6]])
    dx, dy = 6, -4  # pixels
    theta = torch.tensor([2 * dx / w, 2 * dy / h]).expand_as(pts)
    out, flow = warp(x, pts, theta)
    peak = int(out.flatten().argmax())
    assert divmod(peak, w) == (12 + dy, 15 + dx)
    assert out.max() > 0.99
    assert torch.allclose(flow, -theta[0].view(1, 1, 1, 2).expand_as(flow), atol=1e-5)


def test_warp_moves_content_point_onto_target():
    pts = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.3], [-0.4, 0.6], [0.6, 0.5]], dtype=D64)
    theta = torch.tensor([[0.1, 0.05], [-0.05, 0.1], [0.08, -0.08], [0.0, 0.0], [0.0, 0.0]], dtype=D64)
    grid = tps_grid(pts, theta, (4, 4), ridge=1e-9)
    w, a = tps_fit(pts + theta, pts, ridge=1e-9)
    # the backward map sends p_i + theta_i back to p_i
    assert torch.allclose(tps_eval(w, a, pts + theta, pts + theta), pts, atol=1e-6)
    assert grid.dtype == D64


def test_flow_tv():
    assert flow_tv(torch.full((1, 16, 20, 2), 0.3)) == 0
    pts = torch.tensor([[-0.5, -0.4], [0.45, -0.45], [0.0, 0.05], [-0.45, 0.5], [0.5, 0.45]])
    theta = torch.tensor([[0.12, 0.06], [-0.06, 0.12], [0.1, -0.1], [0.08, -0.12], [-0.12, -0.06]])
    small = flow_tv(warp(torch.zeros(1, 1, 32, 40), pts, theta)[1])
    large = flow_tv(warp(torch.zeros(1, 1, 96, 120), pts, theta)[1])
    assert small > 0
    assert 0.85 < float(large / small) < 1.15


def test_warp_loss():
    p = torch.tensor([[0.0, 0.0], [0.5, 0.5]])
    targets = torch.tensor([[0.3, 0.4], [0.5, 0.5]])
    theta = torch.zeros(2, 2, requires_grad=True)
    loss = warp_loss(p, theta, targets)
    assert abs(float(loss.detach()) - 0.25) < 1e-5  # (0.5 + 0) / 2
    loss.backward()
    assert torch.isfinite(theta.grad).all() and theta.grad[1].abs().max() == 0



def test_grid_sample_convention():
    """The identity grid samples every pixel at its own centre (align_corners=False)."""
    x = torch.rand(1, 3, 5, 7)
    out = F.grid_sample(x, identity_grid((5, 7)), align_corners=False)
    assert torch.allclose(out, x, atol=1e-6)
