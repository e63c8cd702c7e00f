"""Deformable style transfer core: thin-plate spline, warp, flow TV, keypoints (matched and read)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst_deploy.deform import (
    KeypointError,
    flow_tv,
    identity_grid,
    tps_eval,
    tps_fit,
    tps_grid,
    warp,
    warp_loss,
)
from nst_deploy.errors import NSTError
from nst_deploy.images import load_image
from nst_deploy.keypoints import draw_keypoints, match_keypoints, read_keypoints
from nst_deploy.lossnets import load_lossnet

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


# ------------------------------------------------------------------------------ keypoint matching
@pytest.fixture(scope="module")
def vgg19():
    return load_lossnet("vgg19")


def _invert(w, a, src, target, steps: int = 60) -> torch.Tensor:
    """Solve g(q) = target for the backward map g by fixed-point iteration (g is near the identity)."""
    q = target.clone()
    for _ in range(steps):
        q = q + (target - tps_eval(w, a, src, q))
    return q


def test_match_keypoints_recovers_known_warp(vgg19, chelsea):
    content = load_image(chelsea, size=112)
    h, w = content.shape[-2:]
    moved = torch.tensor([[-0.5, -0.4], [0.45, -0.45], [0.0, 0.05], [-0.45, 0.5], [0.5, 0.45]])
    shift = torch.tensor([[0.15, 0.08], [-0.08, 0.15], [0.14, -0.1], [0.1, -0.15], [-0.15, -0.08]])  # 5-8%
    # the border stays put, so that every content point has its counterpart inside the style image
    anchors = torch.tensor([[-1.0, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]])
    pts, theta = torch.cat([moved, anchors]), torch.cat([shift, torch.zeros(8, 2)])
    style = warp(content, pts, theta)[0]

    P, Q = match_keypoints(vgg19, content, style, k=80)
    assert P.shape == Q.shape and P.dtype == torch.float32 and 8 <= len(P) <= 80
    assert P.abs().max() <= 1 and Q.abs().max() <= 1
    wb, ab = tps_fit(pts + theta, pts)
    expected = _invert(wb, ab, (pts + theta).double(), P.double())
    px = torch.tensor([w / 2, h / 2], dtype=D64)
    err = ((Q.double() - expected) * px).norm(dim=1)
    disp = ((expected - P.double()) * px).norm(dim=1)
    print(f"pairs {len(P)}, median error {err.median():.2f} px, 90th percentile "
          f"{err.quantile(0.9):.2f} px, mean displacement {disp.mean():.2f} px")
    # measured: 80 pairs, median error 0.36 px, 90th percentile 1.32 px, mean displacement 5.15 px
    assert err.median() < 0.3 * disp.mean()
    assert err.quantile(0.9) < disp.mean()

    P2, Q2 = match_keypoints(vgg19, content, style, k=80)  # deterministic
    assert torch.equal(P, P2) and torch.equal(Q, Q2)


def test_match_keypoints_errors(vgg19):
    flat = torch.full((1, 3, 40, 48), 0.5)
    with pytest.raises(KeypointError, match="--keypoints"):
        match_keypoints(vgg19, flat, flat, size=32)
    with pytest.raises(NSTError, match="shape"):
        match_keypoints(vgg19, flat[0], flat)
    with pytest.raises(NSTError, match="at least 3"):
        match_keypoints(vgg19, flat, flat, k=2)
    with pytest.raises(NSTError, match="relu5_1"):
        match_keypoints(load_lossnet("alexnet", "random"), flat, flat)


# ---------------------------------------------------------------------------- user-given keypoints
CONTENT_HW, STYLE_HW = (100, 200), (50, 80)  # (H, W)


def test_read_keypoints_json_forms(tmp_path):
    pairs = [[[0, 0], [0, 0]], [[200, 100], [80, 50]], [[50, 25], [20, 12.5]]]
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(pairs))
    P, Q = read_keypoints(path, CONTENT_HW, STYLE_HW)
    assert torch.allclose(P, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, -0.5]]))
    assert torch.allclose(Q, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, -0.5]]))
    objects = [{"content": c, "style": s} for c, s in pairs]
    path.write_text(json.dumps(objects, indent=1))
    P2, Q2 = read_keypoints(path, CONTENT_HW, STYLE_HW)
    assert torch.equal(P, P2) and torch.equal(Q, Q2)


def test_read_keypoints_csv(tmp_path):
    plain = tmp_path / "kp.csv"
    plain.write_text("0,0,0,0\n\n200, 100, 80, 50\n# a comment\n50,25,20,12.5\n")
    header = tmp_path / "kp2.csv"
    header.write_text("x2,y2,x,y\n0,0,0,0\n80,50,200,100\n20,12.5,50,25\n")
    P, Q = read_keypoints(plain, CONTENT_HW, STYLE_HW)
    P2, Q2 = read_keypoints(header, CONTENT_HW, STYLE_HW)
    assert torch.allclose(P, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-0.5, -0.5]]))
    assert torch.equal(P, P2) and torch.equal(Q, Q2)


@pytest.mark.parametrize("name,text,match", [
    ("kp.csv", "0,0,0,0\n1,2,3,abc\n4,4,4,4\n", r"line 2: 'abc' is not a number"),
    ("kp.csv", "0,0,0,0\n1,2,3,nan\n4,4,4,4\n", r"line 2: 'nan' is not a finite number"),
    ("kp.csv", "0,0,0,0\n1,2,3\n4,4,4,4\n", r"line 2: expected 4 values"),
    ("kp.csv", "x,y,x2\n0,0,0\n", r"line 1: the header lacks the column\(s\) y2"),
    ("kp.csv", "0,0,0,0\n4,4,4,4\n", r"holds 2 pair\(s\): at least 3"),
    ("kp.csv", "0,0,0,0\n201,5,4,4\n4,4,4,4\n", r"line 2: the content point \(201, 5\) lies outside the content image"),
    ("kp.json", "[[[0,0],[0,0]], [[1,1],[81,1]], [[2,2],[2,2]]]", r"entry 2: the style point \(81, 1\) lies outside"),
    ("kp.json", "[[[0,0],[0,0]], [[1,1]], [[2,2],[2,2]]]", r"entry 2: expected \[\[x, y\], \[x2, y2\]\]"),
    ("kp.json", '[[[0,0],[0,0]], [[1,"x"],[1,1]], [[2,2],[2,2]]]', r"entry 2: 'x' is not a number"),
    ("kp.json", '[{"content": [0, 0]}]', r"entry 1: expected the keys 'content' and 'style'"),
    ("kp.json", "[[[0,0],[0,0]],", r"not valid JSON"),
    ("kp.json", '{"a": 1}', r"expected a JSON list"),
])
def test_read_keypoints_errors(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(KeypointError, match=match) as info:
        read_keypoints(path, CONTENT_HW, STYLE_HW)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_keypoints_missing_file(tmp_path):
    with pytest.raises(KeypointError, match="not found"):
        read_keypoints(tmp_path / "nope.json", CONTENT_HW, STYLE_HW)


# ------------------------------------------------------------------------------------ debug picture
def test_draw_keypoints(tmp_path):
    content, style = torch.rand(1, 3, 64, 80), torch.rand(1, 3, 48, 48)
    P = torch.tensor([[-0.5, -0.5], [0.5, 0.0], [0.0, 0.5]])
    Q = P * 0.8
    grid = tps_grid(P, Q - P, (64, 80))
    out = draw_keypoints(content, style, P, Q, tmp_path / "kp.png", grid=grid)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.height == 256
        assert img.width == 320 + 256 + 320 + 2 * 4  # content, style, warped content; 4 px gaps
    two = draw_keypoints(content, style, P, Q, tmp_path / "two.png")
    with Image.open(two) as img:
        assert img.width == 320 + 256 + 4
    assert not list(tmp_path.glob(".*.tmp"))
    grey = draw_keypoints(content[:, :1], style, P, Q, tmp_path / "grey.png")  # a grey content is fine
    assert grey.is_file()
    with pytest.raises(KeypointError):
        draw_keypoints(content, style, P, Q[:2], tmp_path / "bad.png")
    with pytest.raises(KeypointError, match="shape"):
        draw_keypoints(content[0], style, P, Q, tmp_path / "bad.png")


def test_grid_sample_convention():
    """The identity grid samples every pixel at its own centre (align_corners=False)."""
    x = torch.rand(1, 3, 5, 7)
    out = F.grid_sample(x, identity_grid((5, 7)), align_corners=False)
    assert torch.allclose(out, x, atol=1e-6)
