"""Keypoints for deformable style transfer (:mod:`nst_deploy.deform`): found, read and drawn.

* keypoint matching in the manner of Neural Best-Buddies (Aberman et al. 2018) on a VGG loss
  network (:func:`match_keypoints`);
* user-given keypoints from a JSON or CSV file (:func:`read_keypoints`);
* a debug picture of the pairs and the warp (:func:`draw_keypoints`).

Coordinates are those of :mod:`nst_deploy.deform`: normalized ``(x, y)`` in ``[-1, 1]`` per image.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .deform import KeypointError, check_points
from .images import from_pil, resize, save_image, to_pil
from .lossnets import LossNetwork

__all__ = ["NBB_LAYERS", "draw_keypoints", "match_keypoints", "read_keypoints"]

#: The loss-network layers the keypoint matcher walks, deepest first.
NBB_LAYERS: tuple[str, ...] = ("relu5_1", "relu4_1", "relu3_1", "relu2_1", "relu1_1")


def _rgb(name: str, img: torch.Tensor) -> torch.Tensor:
    """One image ``(1, 3, H, W)``; a grey ``(1, 1, H, W)`` one is repeated to three channels."""
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[0] != 1 or img.shape[1] not in (1, 3):
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise KeypointError(f"{name} must be one RGB image of shape (1, 3, H, W), got {shape}")
    return img.expand(-1, 3, -1, -1)


def _working_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """Longest side ``size``, aspect kept, each side a multiple of 16 (so relu5_1 cells tile exactly)."""
    scale = size / max(h, w)
    return max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)


def _cell_coords(idx: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Normalized centres of flat cell indices of an ``hw`` map."""
    h, w = hw
    y = torch.div(idx, w, rounding_mode="floor")
    x = idx - y * w
    return torch.stack([(2 * x.double() + 1) / w - 1, (2 * y.double() + 1) / h - 1], -1)


_MARGIN = 16  # pixels of reflected border around the working image; relu5_1 cells are 16 px


def _features(net: LossNetwork, img: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """Features at :data:`NBB_LAYERS` of ``img`` at its working size, on the CPU.

    The image is reflect-padded by 16 px before the network and the padding is cropped from each
    layer (16 / stride cells), so that the network's zero padding does not make the image frame
    itself look like a feature worth matching.
    """
    param = next(net.parameters())
    x = resize(img.to(param.device, torch.float32), _working_hw(img.shape[-2], img.shape[-1], size))
    mode = "reflect" if min(x.shape[-2:]) > _MARGIN else "replicate"
    x = F.pad(x, (_MARGIN,) * 4, mode=mode)
    out = {}
    for name, f in net(x.to(param.dtype), list(NBB_LAYERS)).items():
        m = _MARGIN * f.shape[-1] // x.shape[-1]
        out[name] = f[..., m:f.shape[-2] - m, m:f.shape[-1] - m].detach().float().cpu()
    return out


class _Level:
    """One layer of both images: patch descriptors of common-appearance features, activations."""

    def __init__(self, fa: torch.Tensor, fb: torch.Tensor):
        fa, fb = fa[0].float(), fb[0].float()
        self.hw_a, self.hw_b = tuple(fa.shape[-2:]), tuple(fb.shape[-2:])
        self.act_a, self.act_b = self._activation(fa), self._activation(fb)
        # Common appearance (NBB): each image's channel statistics moved to the pair's mean ones.
        ma, sa = fa.mean((1, 2), keepdim=True), fa.std((1, 2), keepdim=True)
        mb, sb = fb.mean((1, 2), keepdim=True), fb.std((1, 2), keepdim=True)
        mm, sm = (ma + mb) / 2, (sa + sb) / 2
        self.desc_a = self._patches((fa - ma) / (sa + 1e-6) * sm + mm)
        self.desc_b = self._patches((fb - mb) / (sb + 1e-6) * sm + mm)

    @staticmethod
    def _activation(f: torch.Tensor) -> torch.Tensor:
        # min-max normalized; a map whose norms vary by less than 1% of their maximum is flat (all 0)
        n = f.norm(dim=0).flatten()
        return (n - n.min()) / torch.maximum(n.max() - n.min(), 0.01 * n.max()).clamp_min(1e-12)

    @staticmethod
    def _patches(f: torch.Tensor) -> torch.Tensor:
        """Unit-norm 3x3 patch descriptors (replicated border), one row per cell: ``(H W, 9 C)``."""
        pad = F.pad(f[None], (1, 1, 1, 1), mode="replicate")
        return F.normalize(F.unfold(pad, 3)[0].t(), dim=1).contiguous()


def _window_cells(y0: torch.Tensor, x0: torch.Tensor, win: tuple[int, int], width: int) -> torch.Tensor:
    """Flat cell indices ``(B, h w)`` of the windows with top-left corners ``(y0, x0)`` in a map ``width`` wide."""
    dy = torch.arange(win[0]).repeat_interleave(win[1])
    dx = torch.arange(win[1]).repeat(win[0])
    return (y0[:, None] + dy[None]) * width + x0[:, None] + dx[None]


def _window_buddies(level: _Level, ca: torch.Tensor, cb: torch.Tensor, radius: int | None,
                    chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours inside window pairs around cells ``ca`` (content) / ``cb`` (style).

    ``radius None``: one window, the whole maps. Otherwise each window is the 2x2 children block of
    the parent cell ``(y, x)`` (i.e. ``(2y, 2x) .. (2y + 1, 2x + 1)``) grown by ``radius`` on each
    side and shifted to stay inside the map. Returns flat indices into the content and style maps
    and the cosine similarity of each pair.
    """
    (ha, wa), (hb, wb) = level.hw_a, level.hw_b
    if radius is None:
        zero = torch.zeros(1, dtype=torch.long)
        win_a, win_b = (ha, wa), (hb, wb)
        ya, xa, yb, xb = zero, zero, zero, zero
    else:
        side = 2 * radius + 2
        win_a, win_b = (min(side, ha), min(side, wa)), (min(side, hb), min(side, wb))

        def corner(c: torch.Tensor, n: int, win: int) -> torch.Tensor:
            return (2 * c - radius).clamp(0, n - win)

        wpa, wpb = wa // 2, wb // 2  # the parent maps' widths (every side is even below relu5_1)
        ya = corner(torch.div(ca, wpa, rounding_mode="floor"), ha, win_a[0])
        xa = corner(ca % wpa, wa, win_a[1])
        yb = corner(torch.div(cb, wpb, rounding_mode="floor"), hb, win_b[0])
        xb = corner(cb % wpb, wb, win_b[1])
    cells_a, cells_b = _window_cells(ya, xa, win_a, wa), _window_cells(yb, xb, win_b, wb)
    ia, ib, sims = [], [], []
    for s in range(0, len(cells_a), chunk):
        ga, gb = cells_a[s:s + chunk], cells_b[s:s + chunk]
        sim = level.desc_a[ga] @ level.desc_b[gb].transpose(1, 2)  # (B, na, nb) cosine similarities
        ab = sim.argmax(2)
        ba = sim.argmax(1)
        mutual = ba.gather(1, ab) == torch.arange(ab.shape[1])[None]
        b, i = mutual.nonzero(as_tuple=True)
        j = ab[b, i]
        sims.append(sim[b, i, j])
        ia.append(ga[b, i])
        ib.append(gb[b, j])
    return torch.cat(ia), torch.cat(ib), torch.cat(sims)


def _first_of(keys: torch.Tensor) -> torch.Tensor:
    """Mask of the first occurrence of each key (in the given order)."""
    _, inverse = torch.unique(keys, return_inverse=True)
    pos = torch.arange(len(keys))
    first = torch.full((int(inverse.max()) + 1 if len(keys) else 0,), len(keys), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    return first[inverse] == pos


def _one_to_one(ia: torch.Tensor, ib: torch.Tensor, sims: torch.Tensor, n_b: int):
    """Keep, per content cell and per style cell, only the most similar pair (ties: lowest indices)."""
    if len(ia) == 0:
        return ia, ib, sims
    key = ia * n_b + ib
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(-sims[order], stable=True)]
    ia, ib, sims = ia[order], ib[order], sims[order]
    keep = _first_of(ia)
    ia, ib, sims = ia[keep], ib[keep], sims[keep]
    keep = _first_of(ib)
    return ia[keep], ib[keep], sims[keep]


def _kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster labels of ``x`` (``(n, d)``) into ``k`` clusters: k-means++ seeding, Lloyd iterations."""
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    sq = x.square().sum(1)

    def nearest(centres: torch.Tensor) -> torch.Tensor:
        return (centres.square().sum(1)[None] - 2 * x @ centres.t()).argmin(1)  # |x|^2 is common

    centres = x[torch.randint(len(x), (1,), generator=gen)]
    d2 = (x - centres[0]).square().sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / len(d2))
        nxt = x[torch.multinomial(probs, 1, generator=gen)]
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, sq - 2 * x @ nxt[0] + nxt[0].square().sum()).clamp_min(0)
    labels = nearest(centres)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        new = nearest(centres)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def _neighbours(p: torch.Tensor, m: int) -> torch.Tensor:
    """Indices ``(n, m)`` of each point's ``m`` nearest other points (ties: lowest index)."""
    d = torch.cdist(p, p)
    d.fill_diagonal_(float("inf"))
    return torch.sort(d, dim=1, stable=True).indices[:, :m]


def _clean(p: torch.Tensor, q: torch.Tensor, score: torch.Tensor, neighbours: int = 6,
           mad_factor: float = 3.0, min_residual: float = 0.03) -> torch.Tensor:
    """Indices of the pairs that survive the outlier and crossing tests (see :func:`match_keypoints`)."""
    keep = torch.arange(len(p))
    if len(p) > 3:
        m = min(neighbours, len(p) - 1)
        nb = _neighbours(p, m)
        disp = q - p
        resid = (disp - disp[nb].median(dim=1).values).norm(dim=1)
        med = resid.median()
        mad = (resid - med).abs().median()
        keep = keep[resid <= torch.clamp(med + mad_factor * 1.4826 * mad, min=min_residual)]
    while len(keep) > 1:
        pk, qk = p[keep], q[keep]
        m = min(neighbours, len(keep) - 1)
        nb = _neighbours(pk, m)
        dp, dq = pk[nb] - pk[:, None], qk[nb] - qk[:, None]  # (n, m, 2)
        along_x = dp[..., 0].abs() >= dp[..., 1].abs()
        flip_x = along_x & (dp[..., 0] * dq[..., 0] <= 0)
        flip_y = ~along_x & (dp[..., 1] * dq[..., 1] <= 0)
        crossing = flip_x | flip_y
        if not bool(crossing.any()):
            break
        count = crossing.sum(1)  # a crossing counts for both of its pairs
        count.index_add_(0, nb[crossing], torch.ones(int(crossing.sum()), dtype=torch.long))
        worst = max(range(len(keep)), key=lambda i: (int(count[i]), -float(score[keep[i]]), -i))
        keep = torch.cat([keep[:worst], keep[worst + 1:]])
    return keep


@torch.no_grad()
def match_keypoints(
    net: LossNetwork,
    content: torch.Tensor,
    style: torch.Tensor,
    k: int = 80,
    *,
    size: int = 224,
    radii: tuple[int, int, int, int] = (4, 3, 2, 2),
    min_activation: float = 0.05,
    deep_quantile: float = 0.25,
    neighbours: int = 6,
    mad_factor: float = 3.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match keypoints between a content and a style image, Neural Best-Buddies style.

    Following Aberman et al. (2018), on the loss network's hierarchy ``relu5_1, relu4_1, relu3_1,
    relu2_1, relu1_1`` (:data:`NBB_LAYERS`):

    1. Working size: each image is resized (antialiased bicubic), keeping its own aspect, so that its
       longest side is ``size`` and each side is a multiple of 16 (relu5_1 cells then tile the image
       exactly and a cell ``(y, x)`` of a layer has the children ``(2y .. 2y+1, 2x .. 2x+1)`` below).
       The two images may have different shapes; coordinates come back normalized per image, so
       the resizing does not show in them. Each image is reflect-padded by 16 px for the network
       and the padding is cropped from the features, so that the zero padding of the convolutions
       does not turn the image frame into matchable features (a flat image has no keypoints).
    2. Common appearance: at each layer each image's features ``F`` are moved to the pair's mean
       channel statistics, ``F' = (F - mu) / sigma * (sigma_A + sigma_B) / 2 + (mu_A + mu_B) / 2``
       (per channel, over positions); descriptors are the unit-normalized 3x3 patches of ``F'``,
       so their dot product is the cosine similarity of the patches. The activation of a cell is its
       feature norm ``|F(p)|`` min-max normalized to ``[0, 1]`` over the image's map (divided by at
       least 1% of the largest norm, so that a flat map has no active cells).
    3. Deepest layer: best buddies are the mutual nearest neighbours ``p -> q -> p`` over the whole
       maps; pairs whose activation is below the ``deep_quantile`` quantile of its map (in either
       image) or below ``min_activation`` are dropped.
    4. Refinement: each pair ``(p, q)`` of layer ``l`` maps to the windows of layer ``l - 1`` made of
       the children of ``p`` and of ``q`` grown by ``radii[l]`` cells on every side (4, 3, 2, 2 by
       default: the window shrinks in pixels as the layers get finer), where mutual nearest
       neighbours are found again; pairs with an activation below ``min_activation`` in either
       image are dropped, and each cell keeps only its most similar partner (one-to-one).
    5. At relu1_1 the pairs are clustered into at most ``k`` clusters by k-means on the
       concatenated positions ``(p, q)`` (k-means++ seeding with a ``seed``-ed generator); each
       cluster is represented by its pair of highest activation ``H_A(p) + H_B(q)``.
    6. Cleaning, on the representatives. Outliers: with ``d_i = q_i - p_i`` and ``m_i`` the
       component-wise median displacement of the ``neighbours`` content-nearest other pairs,
       ``e_i = |d_i - m_i|``; pairs with ``e_i > max(median(e) + mad_factor * 1.4826 MAD(e), 0.03)``
       (0.03 normalized units: 1.5% of the image side) are dropped. Crossings: two pairs ``i, j``
       whose content points are among each other's ``neighbours`` nearest cross when their order
       flips along the axis on which their content points are further apart (``|dx| >= |dy|``:
       ``sign(p_j.x - p_i.x) != sign(q_j.x - q_i.x)``, likewise for ``y``): such a pair would fold
       the warp (a local rotation of up to 45 degrees is still allowed). The pair with the most
       crossings is removed (ties: lowest activation, then highest index) until none is left.

    The result is deterministic for the same inputs.

    Args:
        net: a VGG loss network (it needs the layers :data:`NBB_LAYERS`).
        content, style: RGB ``(1, 3, H, W)`` in ``[0, 1]`` (grey ``(1, 1, H, W)`` is repeated).
        k: the most pairs returned (at least 3).
        size: the working size (longest side, pixels).
        radii: window growth at relu4_1, relu3_1, relu2_1, relu1_1.
        min_activation: the least normalized activation of a kept cell.
        deep_quantile: the activation quantile kept at relu5_1.
        neighbours: neighbourhood size of the cleaning tests.
        mad_factor: outlier threshold in robust standard deviations.
        seed: the k-means seed.

    Returns:
        ``(P, P_prime)``: ``(n, 2)`` float32 normalized coordinates, ``P`` on the content and
        ``P_prime`` on the style, ``3 <= n <= k``.

    Raises:
        KeypointError: fewer than 3 pairs survive (suggesting ``--keypoints``), or bad inputs.
    """
    content, style = _rgb("content", content), _rgb("style", style)
    if k < 3:
        raise KeypointError(f"the number of keypoints must be at least 3, got {k}")
    if size < 32:
        raise KeypointError(f"the keypoint working size must be at least 32 pixels, got {size}")
    if len(radii) != len(NBB_LAYERS) - 1 or min(radii) < 0:
        raise KeypointError(f"radii must be {len(NBB_LAYERS) - 1} non-negative window radii, got {radii}")
    missing = [n for n in NBB_LAYERS if n not in net.layer_names]
    if missing:
        raise KeypointError(f"keypoint matching needs a VGG loss network with {', '.join(NBB_LAYERS)}; "
                            f"{net.arch} lacks {', '.join(missing)}")
    feats = [_features(net, img, size) for img in (content, style)]

    level = _Level(feats[0][NBB_LAYERS[0]], feats[1][NBB_LAYERS[0]])
    ia, ib, sims = _window_buddies(level, torch.zeros(0), torch.zeros(0), None)
    qa = torch.quantile(level.act_a, deep_quantile).clamp(min=min_activation)
    qb = torch.quantile(level.act_b, deep_quantile).clamp(min=min_activation)
    ok = (level.act_a[ia] >= qa) & (level.act_b[ib] >= qb)
    ia, ib, sims = ia[ok], ib[ok], sims[ok]
    for name, radius in zip(NBB_LAYERS[1:], radii, strict=True):
        if len(ia) == 0:
            break
        level = _Level(feats[0][name], feats[1][name])
        ia, ib, sims = _window_buddies(level, ia, ib, radius)
        ok = (level.act_a[ia] >= min_activation) & (level.act_b[ib] >= min_activation)
        ia, ib, sims = _one_to_one(ia[ok], ib[ok], sims[ok], level.hw_b[0] * level.hw_b[1])
    if len(ia) < 3:
        raise KeypointError(_too_few(len(ia)))

    p, q = _cell_coords(ia, level.hw_a), _cell_coords(ib, level.hw_b)
    score = level.act_a[ia] + level.act_b[ib]
    if len(ia) > k:
        labels = _kmeans(torch.cat([p, q], 1), k, seed=seed)
        best = torch.full((k,), -1, dtype=torch.long)
        for c in range(k):  # highest activation per cluster, ties: lowest index
            members = (labels == c).nonzero(as_tuple=True)[0]
            if len(members):
                best[c] = members[torch.argmax(score[members])]
        chosen = best[best >= 0].sort().values
        p, q, score = p[chosen], q[chosen], score[chosen]
    keep = _clean(p, q, score, neighbours=neighbours, mad_factor=mad_factor)
    if len(keep) < 3:
        raise KeypointError(_too_few(len(keep)))
    return p[keep].float(), q[keep].float()


def _too_few(n: int) -> str:
    return (f"only {n} keypoint pair(s) could be matched between the content and the style image "
            f"(at least 3 are needed): give keypoints by hand with --keypoints")


# ---------------------------------------------------------------------------- user-given keypoints
def _number(text, where: str) -> float:
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise KeypointError(f"{where}: {text!r} is not a number")
    try:
        value = float(text)
    except ValueError:
        raise KeypointError(f"{where}: {str(text).strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise KeypointError(f"{where}: {str(text).strip()!r} is not a finite number")
    return value


def _json_pairs(text: str, path: str) -> list[tuple[str, list]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise KeypointError(f"keypoints file '{path}' is not valid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, list):
        raise KeypointError(f"keypoints file '{path}': expected a JSON list of pairs, got {type(data).__name__}")
    rows = []
    for n, entry in enumerate(data, start=1):
        where = f"keypoints file '{path}', entry {n}"
        if isinstance(entry, dict):
            if set(entry) != {"content", "style"}:
                raise KeypointError(f"{where}: expected the keys 'content' and 'style', got {sorted(entry)}")
            pair = [entry["content"], entry["style"]]
        else:
            pair = entry
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(pt, list) and len(pt) == 2 for pt in pair)
        if not ok:
            raise KeypointError(f"{where}: expected [[x, y], [x2, y2]] or {{\"content\": [x, y], \"style\": [x2, y2]}}")
        rows.append((where, [pair[0][0], pair[0][1], pair[1][0], pair[1][1]]))
    return rows


_CSV_COLUMNS = ("x", "y", "x2", "y2")


def _csv_pairs(text: str, path: str) -> list[tuple[str, list]]:
    rows = []
    columns = None
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        where = f"keypoints file '{path}', line {n}"
        if columns is None and not rows:
            names = [c.lower() for c in cells]
            if any(c in _CSV_COLUMNS for c in names):
                missing = [c for c in _CSV_COLUMNS if c not in names]
                if missing:
                    raise KeypointError(f"{where}: the header lacks the column(s) {', '.join(missing)}")
                columns = [names.index(c) for c in _CSV_COLUMNS]
                continue
        if columns is None:
            if len(cells) != 4:
                raise KeypointError(f"{where}: expected 4 values x, y, x2, y2, got {len(cells)}")
            rows.append((where, cells))
        else:
            if len(cells) <= max(columns):
                raise KeypointError(f"{where}: expected {max(columns) + 1} columns, got {len(cells)}")
            rows.append((where, [cells[i] for i in columns]))
    return rows


def read_keypoints(path: str | os.PathLike, content_hw: tuple[int, int],
                   style_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read user-given keypoint pairs and convert them to normalized coordinates.

    Accepted files:

    * JSON (``.json``, or any file whose first character is ``[``): a list whose entries are
      ``[[x, y], [x2, y2]]`` or ``{"content": [x, y], "style": [x2, y2]}``;
    * CSV (anything else): rows ``x, y, x2, y2``; an optional header names the columns (in any
      order, further columns ignored); blank lines and lines starting with ``#`` are skipped.

    ``(x, y)`` is a point of the original content image and ``(x2, y2)`` of the original style
    image, in pixels, measured from the top-left corner of the image (pixel column ``j`` spans
    ``[j, j + 1)``, so its centre is ``j + 0.5``). A point must lie inside its image, ``0 <= x <= W``
    and ``0 <= y <= H``; it becomes ``(2 x / W - 1, 2 y / H - 1)``.

    Args:
        path: the file.
        content_hw, style_hw: ``(H, W)`` of the original content and style images.

    Returns:
        ``(P, P_prime)``: ``(n, 2)`` float32 normalized points on the content and the style.

    Raises:
        KeypointError: missing or unreadable file, malformed entry, a value that is not a finite
            number, a point outside its image, or fewer than 3 pairs; the message names the file and
            the entry or line.
    """
    path_s = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise KeypointError(f"keypoints file '{path_s}' not found") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise KeypointError(f"cannot read keypoints file '{path_s}': {reason}") from None
    is_json = Path(path_s).suffix.lower() == ".json" or text.lstrip().startswith(("[", "{"))
    rows = _json_pairs(text, path_s) if is_json else _csv_pairs(text, path_s)
    p, q = [], []
    (ch, cw), (sh, sw) = content_hw, style_hw
    for where, values in rows:
        x, y, x2, y2 = (_number(v, where) for v in values)
        for what, (u, v), (h, w) in (("content", (x, y), (ch, cw)), ("style", (x2, y2), (sh, sw))):
            if not (0 <= u <= w and 0 <= v <= h):
                raise KeypointError(f"{where}: the {what} point ({u:g}, {v:g}) lies outside the {what} image "
                                    f"({w}x{h} pixels)")
        p.append((2 * x / cw - 1, 2 * y / ch - 1))
        q.append((2 * x2 / sw - 1, 2 * y2 / sh - 1))
    if len(p) < 3:
        raise KeypointError(f"keypoints file '{path_s}' holds {len(p)} pair(s): at least 3 are needed")
    return torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32)


# ------------------------------------------------------------------------------------ debug picture
def _colour(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _to_px(pts: torch.Tensor, w: int, h: int, dx: int = 0) -> list[tuple[float, float]]:
    pts = pts.detach().double().cpu()
    return [(float((x + 1) * w / 2) + dx, float((y + 1) * h / 2)) for x, y in pts.tolist()]


def _grid_panel(content: torch.Tensor, grid: torch.Tensor, step: int = 16) -> torch.Tensor:
    """The content warped by ``grid`` with a regular grid (lines every ``step`` px) warped along."""
    h, w = grid.shape[1], grid.shape[2]
    x = resize(content.detach().float().cpu(), (h, w))
    lines = torch.zeros(1, 1, h, w)
    lines[..., step // 2::step, :] = 1.0
    lines[..., :, step // 2::step] = 1.0
    g = grid.detach().float().cpu()
    warped = F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)
    mask = F.grid_sample(lines, g, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1) * 0.8
    colour = torch.tensor([1.0, 0.9, 0.1]).view(1, 3, 1, 1)
    return warped * (1 - mask) + colour * mask


def draw_keypoints(content: torch.Tensor, style: torch.Tensor, P: torch.Tensor, P_prime: torch.Tensor,
                   path: str | os.PathLike, grid: torch.Tensor | None = None) -> Path:
    """Write a debug picture of keypoint pairs (and of a warp) to a PNG file, atomically.

    Panels, side by side at a common height (the content's, at least 256 px): the content with its points, the
    style with its points, pair ``i`` drawn in the same colour with its number and joined by a
    line; and, if ``grid`` (a ``(1, H, W, 2)`` sampling grid, e.g. from :func:`nst_deploy.deform.tps_grid`) is given,
    the content warped by it with a regular grid (lines every 16 px) deformed by the same warp.

    Args:
        content, style: RGB ``(1, 3, H, W)`` in ``[0, 1]`` (grey ``(1, 1, H, W)`` is repeated).
        P, P_prime: ``(n, 2)`` normalized points on the content and the style.
        path: the ``.png`` file to write (through :func:`nst_deploy.images.save_image`).
        grid: optional sampling grid.

    Returns:
        the path written.

    Raises:
        KeypointError: images or point sets of the wrong shape; ImageError: the file cannot be
            written.
    """
    content, style = _rgb("content", content), _rgb("style", style)
    check_points("P", P)
    check_points("P_prime", P_prime)
    if len(P) != len(P_prime):
        raise KeypointError(f"P and P_prime must hold as many points, got {len(P)} and {len(P_prime)}")
    if grid is not None and (grid.dim() != 4 or grid.shape[0] != 1 or grid.shape[-1] != 2):
        raise KeypointError(f"grid must have shape (1, H, W, 2), got {tuple(grid.shape)}")
    height = max(int(content.shape[-2]), 256)  # small images are enlarged so that the labels stay legible
    cw = max(1, round(content.shape[-1] * height / content.shape[-2]))
    panels = [resize(content.detach().float().cpu(), (height, cw))]
    sw = max(1, round(style.shape[-1] * height / style.shape[-2]))
    panels.append(resize(style.detach().float().cpu(), (height, sw)))
    if grid is not None:
        gp = _grid_panel(content, grid)
        gw = max(1, round(gp.shape[-1] * height / gp.shape[-2]))
        panels.append(resize(gp, (height, gw)))
    gap = 4
    width = sum(p.shape[-1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    offsets, x0 = [], 0
    for panel in panels:
        canvas.paste(to_pil(panel), (x0, 0))
        offsets.append(x0)
        x0 += panel.shape[-1] + gap
    draw = ImageDraw.Draw(canvas)
    pc = _to_px(P, cw, height)
    ps = _to_px(P_prime, sw, height, offsets[1])
    radius = max(2, round(height / 100))
    for i, (a, b) in enumerate(zip(pc, ps, strict=True)):
        draw.line([a, b], fill=_colour(i), width=1)
    for i, (a, b) in enumerate(zip(pc, ps, strict=True)):
        for cx, cy in (a, b):
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=_colour(i), outline=(0, 0, 0))
            draw.text((cx + radius + 1, cy - radius - 1), str(i), fill=_colour(i))
    return save_image(from_pil(canvas), path)
