"""Keypoints for deformable transfer: matched on VGG19 (a known warp recovered), read from files, drawn."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from nst_deploy.deform import KeypointError, tps_eval, tps_fit, tps_grid, warp
from nst_deploy.errors import NSTError
from nst_deploy.images import load_image
from nst_deploy.keypoints import draw_keypoints, match_keypoints, read_keypoints
from nst_deploy.lossnets import load_lossnet

D64 = torch.float64


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
