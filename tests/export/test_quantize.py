"""nst-export --int8: the int8 model, its quality drop bounded, and the runtime taking it up on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime.quantization")

from nst_deploy.export import export_model  # noqa: E402
from nst_deploy.export import quantize as Q  # noqa: E402
from nst_deploy.export.cli import main as export_main  # noqa: E402

from nst_deploy.errors import NSTError  # noqa: E402
from nst_deploy.nets.io import bundled_models  # noqa: E402
from nst_deploy.runtime import Stylizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "nst_deploy" / "data"
HELD_OUT = Path(__file__).resolve().parents[3] / "shared" / "assets" / "content" / "astronaut.png"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "exp"
    assert export_main([str(bundled_models()["johnson__starry_night"]), "-o", str(out), "--format", "onnx",
                        "--int8"]) == 0
    return out


def test_the_int8_model_is_written_checked_and_recorded(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    art = manifest["artifacts"]["onnx_int8"]
    assert art["file"] == "model.int8.onnx" and (exported / "model.int8.onnx").stat().st_size == art["bytes"]
    assert art["bytes"] < 0.7 * manifest["artifacts"]["onnx"]["bytes"]  # int8 weights
    q = manifest["int8"]
    assert q["calibration"] == "the bundled photographs" and q["calibration_images"] == 12
    w = q["worst"]
    assert w["style_drift"] <= Q.BOUNDS["style_drift"] and w["content_drift"] <= Q.BOUNDS["content_drift"]
    assert w["psnr_db"] >= Q.BOUNDS["psnr_db"] and len(q["photos"]) == 2
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported / "model.int8.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("SpaceToDepth") == 1


def test_the_runtime_takes_the_int8_model_on_the_cpu(exported):
    auto = Stylizer.load(exported / "model.onnx", device="cpu")
    fp32 = Stylizer.load(exported / "model.onnx", device="cpu", precision="fp32")
    assert auto.fallback is not None and fp32.fallback is None
    photo = np.asarray(Image.open(HELD_OUT if HELD_OUT.is_file() else DATA / "chelsea.jpg").convert("RGB")
                       .resize((200, 200)), np.float32) / 255
    a, b = auto(photo), fp32(photo)
    psnr = 10 * np.log10(1 / np.mean((a - b) ** 2))
    assert np.abs(a - b).max() > 0 and psnr > 30, psnr  # another model, close to the float32 one
    explicit = Stylizer.load(exported / "model.onnx", device="cpu", precision="int8")
    np.testing.assert_allclose(explicit(photo), a, atol=1e-6)
    # an image over the memory budget runs in tiles on model.onnx (the int8 file has no tiles graph)
    small = Stylizer.load(exported / "model.onnx", device="cpu", memory_mb=40)
    big = np.random.default_rng(0).random((300, 460, 3), dtype=np.float32)
    np.testing.assert_allclose(small(big), Stylizer.load(exported / "model.onnx", device="cpu", precision="fp32",
                                                         memory_mb=40)(big), atol=1e-5)
    assert small.fallback is None


def test_a_copied_int8_file_without_the_manifest_entry_is_not_taken(exported, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in ("model.onnx", "model.tiles.onnx", "model.int8.onnx"):
        shutil.copy(exported / f, other / f)
    (other / "manifest.json").write_text(json.dumps({"artifacts": {"onnx": {"file": "model.onnx"}}}))
    assert Stylizer.load(other / "model.onnx", device="cpu").fallback is None


def test_calibration_folder_and_refusals(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("chelsea.jpg", "coffee.jpg")):
        Image.open(DATA / name).convert("RGB").rotate(10 * i).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not an image")
    assert len(Q.calibration_images(photos)) == 2
    with pytest.raises(NSTError, match="no readable image"):
        Q.calibration_images(tmp_path / "photos" / "..", limit=0)
    model = bundled_models()["johnson__the_scream"]
    with pytest.raises(NSTError, match="leave out --fp16"):
        export_model(model, tmp_path / "a", formats=("onnx",), precision="fp16", int8=True)
    with pytest.raises(NSTError, match="keep the onnx format"):
        export_model(model, tmp_path / "a", formats=("torchscript",), int8=True)
    with pytest.raises(NSTError, match="is for --int8"):
        export_model(model, tmp_path / "a", formats=("onnx",), calibration=photos)
    with pytest.raises(NSTError, match="is not a folder"):
        export_model(model, tmp_path / "a", formats=("onnx",), int8=True, calibration=tmp_path / "none")
    m = export_model(model, tmp_path / "b", formats=("onnx",), int8=True, calibration=photos)
    assert m["int8"]["calibration"] == str(photos) and m["int8"]["calibration_images"] == 2
    # past the bounds: refused, and the output folder is left as it was
    monkeypatch.setitem(Q.BOUNDS, "psnr_db", 99.0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(NSTError, match=r"loses too much.*psnr_db"):
        export_model(model, tmp_path / "c", formats=("onnx",), int8=True)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["keep.txt"]


def test_a_multistyle_network_quantizes_with_its_style_input(tmp_path):
    import torch

    from nst_deploy.nets import create
    from nst_deploy.nets.io import save_model

    torch.manual_seed(0)
    net = create("multistyle", n_styles=3, width=0.5).eval()
    with torch.no_grad():
        for norm in net.norms():
            norm.gamma.uniform_(0.5, 1.5)
            norm.beta.normal_(0.0, 0.3)
    path = save_model(tmp_path / "multi.pt", net, "multistyle")
    out = tmp_path / "exp"
    manifest = export_model(path, out, formats=("onnx",), int8=True)
    assert manifest["int8"]["worst"]["psnr_db"] >= Q.BOUNDS["psnr_db"]
    s = Stylizer.load(out / "model.onnx", device="cpu")
    assert s.n_styles == 3 and s.fallback is not None  # the int8 model, with its style input
    fp32 = Stylizer.load(out / "model.onnx", device="cpu", precision="fp32")
    photo = np.asarray(Image.open(DATA / "coffee.jpg").convert("RGB").resize((96, 64)), np.float32) / 255
    for style in (0, 2, {0: 0.5, 1: 0.5}):
        a, b = s(photo, style=style), fp32(photo, style=style)
        assert 10 * np.log10(1 / np.mean((a - b) ** 2)) > 28
    assert np.abs(s(photo, style=0) - s(photo, style=2)).mean() > 0.01  # the style input still steers it
