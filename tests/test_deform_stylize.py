"""Deformable style transfer end to end: the joint optimization of pixels and warp, options, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst_deploy.cli import main
from nst_deploy.deform import tps_eval, tps_fit, warp
from nst_deploy.errors import NSTError
from nst_deploy.images import load_image, save_image
from nst_deploy.optimize import stylize

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"
SIZE = 96
# A known smooth deformation: four inner control points moved by 8-12% of the half-size, the
# border held in place (so the deformed image has no padded region and its borders stay borders).
_BORDER = [[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]]
CTRL = torch.tensor([[-0.4, -0.4], [0.4, -0.4], [-0.4, 0.4], [0.4, 0.4]] + _BORDER, dtype=torch.float32)
MOVE = torch.tensor([[0.12, 0.08], [-0.1, 0.1], [0.1, -0.1], [-0.08, -0.12]] + [[0, 0]] * 8, dtype=torch.float32)


@pytest.fixture(scope="module")
def pair():
    content = load_image(DATA / "chelsea.jpg", size=SIZE)
    style, _ = warp(content, CTRL, MOVE)
    return content, style


def _true_targets(points: torch.Tensor) -> torch.Tensor:
    """Where the known deformation sends content points (the spline through the control points)."""
    w, a = tps_fit(CTRL, CTRL + MOVE, ridge=1e-6)
    return tps_eval(w, a, CTRL, points)


def _run(content, style, **kw):
    infos = []
    out = stylize(content, style, size=SIZE, deform=True, callback=infos.append, as_tensor=True, **kw)
    return out, infos


def test_known_deformation_halves_the_point_error(pair, tmp_path):
    content, style = pair
    out, infos = _run(content, style, steps=30, k=40, style_weight=1e3, deform_debug=str(tmp_path / "dbg.png"))
    d = infos[-1].deform
    p, q, theta = d["points"].cpu(), d["targets"].cpu(), d["theta"].cpu()
    true = _true_targets(p)
    before = float((p - true).norm(dim=1).mean())
    matched = float((q - true).norm(dim=1).mean())
    after = float((p + theta - true).norm(dim=1).mean())
    # measured at 96 px: 40 pairs, before 0.078, matched 0.014, after 0.021 (normalized units)
    assert len(p) >= 10
    assert matched < 0.5 * before, (before, matched)
    assert after < 0.5 * before, (before, after)
    assert out.shape == content.shape and torch.isfinite(out).all()
    assert infos[-1].terms.warp > 0
    assert infos[-1].terms.total < infos[0].terms.total
    dbg = load_image(tmp_path / "dbg.png")
    assert dbg.shape[-1] > 2 * content.shape[-1]  # content, style and warp-grid panels


def test_user_keypoints_move_the_points(pair, tmp_path):
    content, style = pair
    h, w = content.shape[-2:]
    pts = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])
    tgt = _true_targets(pts)

    def px(v, n):  # continuous pixel coordinates from the top-left corner (read_keypoints' convention)
        return float((v + 1) * n / 2)

    rows = ["x,y,x2,y2"] + [f"{px(a[0], w)},{px(a[1], h)},{px(b[0], w)},{px(b[1], h)}"
                            for a, b in zip(pts, tgt, strict=True)]
    (tmp_path / "kp.csv").write_text("\n".join(rows) + "\n")
    _, infos = _run(content, style, steps=30, keypoints=str(tmp_path / "kp.csv"))
    d = infos[-1].deform
    assert torch.allclose(d["points"].cpu(), pts, atol=1e-4)
    before = float((pts - tgt).norm(dim=1).mean())
    after = float((pts + d["theta"].cpu() - tgt).norm(dim=1).mean())
    assert after < 0.5 * before, (before, after)


def test_other_style_representation(pair):
    content, style = pair
    out, infos = _run(content, style, steps=8, k=20, style_rep="autocorr", style_weight=10)
    assert torch.isfinite(out).all() and infos[-1].terms.total < infos[0].terms.total


def test_deform_options_are_checked(pair):
    content, style = pair
    with pytest.raises(NSTError, match="one style"):
        stylize(content, [style, style], size=SIZE, steps=1, deform=True)
    with pytest.raises(NSTError, match="add deform"):
        stylize(content, style, size=SIZE, steps=1, keypoints="kp.csv")
    with pytest.raises(NSTError, match="k .*between 3"):
        stylize(content, style, size=SIZE, steps=1, deform=True, k=2)
    with pytest.raises(NSTError, match="does not exist"):
        stylize(content, style, size=SIZE, steps=1, deform=True, keypoints="/nonexistent/kp.json")


def test_cli_deform(pair, tmp_path, capsys):
    content, style = pair
    save_image(content, tmp_path / "c.png")
    save_image(style, tmp_path / "s.png")
    kp = [[[10, 10], [14, 12]], [[80, 10], [77, 15]], [[10, 55], [15, 52]], [[80, 55], [76, 50]], [[45, 30], [45, 30]]]
    (tmp_path / "kp.json").write_text(json.dumps(kp))
    out, dbg = tmp_path / "o.png", tmp_path / "d.png"
    args = ["stylize", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"), "-o", str(out), "--size", "64",
            "--steps", "3", "-q"]
    assert main([*args, "--deform", "--keypoints", str(tmp_path / "kp.json"), "--deform-debug", str(dbg)]) == 0
    assert out.is_file() and dbg.is_file()
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("[[[1, 2], [3]]]")
    out.unlink()
    assert main([*args, "--deform", "--keypoints", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--keypoints", str(tmp_path / "kp.json")]) == 2
    assert "deform" in capsys.readouterr().err


def test_scales_preserve_color_and_resume(pair, tmp_path, monkeypatch):
    """theta carries over from scale to scale; colour preservation; a checkpoint resumes the joint state."""
    import nst_deploy.optimize as optimize

    content, style = pair
    kp = tmp_path / "kp.json"
    kp.write_text(json.dumps([[[20, 20], [26, 24]], [[70, 20], [64, 26]], [[20, 45], [26, 40]],
                              [[70, 45], [66, 40]], [[48, 32], [48, 32]]]))
    opts = dict(scales=[48, 96], steps=[6, 3], keypoints=str(kp), preserve_color=True)
    starts = []  # the theta each scale's joint variable starts from
    pack = optimize._DeformObjective.pack
    monkeypatch.setattr(optimize._DeformObjective, "pack",
                        lambda self, x, theta: starts.append(theta.detach().clone()) or pack(self, x, theta))
    out, infos = _run(content, style, **opts)
    monkeypatch.undo()
    assert out.shape == content.shape and torch.isfinite(out).all()
    last_coarse = next(i for i in reversed(infos) if i.scale == 0).deform["theta"]
    assert float(last_coarse.abs().max()) > 0.01
    # scale 1 starts from scale 0's result (its best iterate), not from zero
    assert len(starts) == 2 and float(starts[0].abs().max()) == 0.0 and float(starts[1].abs().max()) > 0.01
    coarse = [i.deform["theta"].cpu() for i in infos if i.scale == 0]
    assert any(torch.allclose(starts[1].cpu(), t, rtol=0, atol=1e-6) for t in coarse)
    # interrupted after scale 1 and resumed: the same result as the straight run
    ck = tmp_path / "ck.pt"
    a, _ = _run(content, style, **opts, checkpoint=str(ck), checkpoint_every=1)
    b, _ = _run(content, style, **opts, checkpoint=str(ck), resume=True)
    assert torch.allclose(a, b, atol=1e-5)


def test_recipe_keys(tmp_path):
    from nst_deploy.recipes import read_recipe

    (tmp_path / "r.toml").write_text('deform = true\nkeypoints = "kp.json"\nk = 40\nwarp_weight = 3.0\n'
                                     'flow_tv = 0.5\ndeform_debug = "dbg.png"\n')
    r = read_recipe(tmp_path / "r.toml")
    assert r["deform"] is True and r["k"] == 40 and r["warp_weight"] == 3.0 and r["flow_tv"] == 0.5
    assert Path(r["keypoints"]) == tmp_path / "kp.json" and Path(r["deform_debug"]) == tmp_path / "dbg.png"
