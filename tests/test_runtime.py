"""The unified runtime: backends, parity with eager, refusal of unverified or broken files, inputs."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from nst_deploy.export import export_model
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.errors import NSTError
from nst_deploy.nets.io import bundled_models, load_model
from nst_deploy.runtime import Stylizer

DATA = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported")
    export_model(bundled_models()["johnson__starry_night"], out)
    return out


def test_both_formats_equal_eager(exported):
    net, _ = load_model(bundled_models()["johnson__starry_night"])
    x = torch.rand(2, 3, 45, 61)
    with torch.no_grad():
        ref = net(x)
    for name, backend in (("model.onnx", "onnx"), ("model.pt", "torchscript")):
        s = Stylizer.load(exported / name)
        assert s.backend == backend and s.meta["style"] == "starry_night.jpg"
        assert torch.allclose(s(x), ref, atol=1e-4)
    assert Stylizer.load(bundled_models()["johnson__starry_night"]).backend == "eager"


def test_input_kinds_and_checks(exported):
    s = Stylizer.load(exported / "model.onnx")
    arr = np.asarray(Image.open(DATA / "chelsea.jpg").convert("RGB").resize((64, 43)))
    out = s(arr)
    assert out.dtype == np.uint8 and out.shape == arr.shape
    pil = s(Image.fromarray(arr))
    assert isinstance(pil, Image.Image) and pil.size == (64, 43)
    assert np.abs(np.asarray(pil).astype(int) - out.astype(int)).max() <= 1
    for bad, msg in [(np.zeros((10, 10), np.uint8), "HxWx3"), (torch.zeros(3, 20, 20), "N, 3, H, W"),
                     (torch.zeros(1, 4, 20, 20), "N, 3, H, W"),
                     (torch.zeros(1, 3, 20, 20, dtype=torch.uint8), "floating"),
                     (torch.full((1, 3, 20, 20), float("nan")), "NaN"), (torch.zeros(1, 3, 4, 20), "between"),
                     ("photo.jpg", "PIL image")]:
        with pytest.raises(NSTError, match=msg):
            s(bad)


def test_concurrent_calls(exported):
    s = Stylizer.load(exported / "model.onnx")
    xs = [torch.rand(1, 3, 24 + 4 * i, 32) for i in range(4)]
    refs = [s(x) for x in xs]
    results = [None] * 4

    def work(i):
        results[i] = s(xs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, q) for r, q in zip(results, refs, strict=True))


def test_tampered_torchscript_is_refused_before_loading(exported, tmp_path, monkeypatch):
    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    data = bytearray((d / "model.pt").read_bytes())
    data[-200] ^= 0xFF
    (d / "model.pt").write_bytes(bytes(data))
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(NSTError, match="sha256 does not match"):
        Stylizer.load(d / "model.pt")
    (d / "manifest.json").unlink()
    with pytest.raises(NSTError, match="no manifest.json"):
        Stylizer.load(d / "model.pt")
    assert not loaded  # torch.jit.load was never reached


def test_broken_onnx_files(exported, tmp_path):
    data = (exported / "model.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("trunc.onnx", "random.onnx"):
        with pytest.raises(NSTError, match="cannot be"):
            Stylizer.load(tmp_path / name)
    with pytest.raises(NSTError, match="does not exist"):
        Stylizer.load(tmp_path / "missing.onnx")


def test_onnx_external_data_must_stay_in_its_folder(exported, tmp_path):
    model = onnx.load(str(exported / "model.onnx"))
    big = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4)
    raw = onnx.numpy_helper.to_array(big).tobytes()
    (tmp_path / "outside.bin").write_bytes(raw)
    big.ClearField("float_data")
    big.ClearField("raw_data")
    big.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", str(len(raw)))):
        e = big.external_data.add()
        e.key, e.value = key, value
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    with pytest.raises(NSTError, match="outside its folder"):
        Stylizer.load(tmp_path / "m" / "model.onnx")


def test_nst_run_uses_the_stylizer(exported, tmp_path):
    src = DATA / "chelsea.jpg"
    outs = {}
    for name in ("model.onnx", "model.pt"):
        out = tmp_path / f"{name}.png"
        assert main(["run", str(exported / name), str(src), "-o", str(out), "--size", "80", "-q"]) == 0
        outs[name] = np.asarray(Image.open(out)).astype(int)
    eager = tmp_path / "eager.png"
    assert main(["run", "starry_night", str(src), "-o", str(eager), "--size", "80", "-q"]) == 0
    ref = np.asarray(Image.open(eager)).astype(int)
    for v in outs.values():
        assert np.abs(v - ref).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_bound_in_place(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    cpu = Stylizer.load(exported / "model.onnx", device="cpu")
    gpu = Stylizer.load(exported / "model.onnx", device="cuda", providers=["CUDAExecutionProvider"])
    assert gpu.device.type == "cuda"
    x = torch.rand(2, 3, 72, 100)
    y = gpu(x.cuda())
    assert y.is_cuda and (y.cpu() - cpu(x)).abs().max() < 1e-3
    ts = Stylizer.load(exported / "model.pt", device="cuda", precision="fp16")
    assert (ts(x.cuda()).cpu() - cpu(x)).abs().max() < 2e-2


def test_precision_option(exported):
    x = torch.rand(1, 3, 40, 56)
    ref = Stylizer.load(exported / "model.onnx")(x)
    for path in (exported / "model.pt", bundled_models()["johnson__starry_night"]):
        s = Stylizer.load(path, precision="fp16")  # float32 TorchScript and eager models cast
        assert s.dtype == torch.float16 and s.meta["precision"] == "fp16"
        y = s(x)
        assert y.dtype == torch.float32 and 0 < (y - ref).abs().max() < 2e-2
        assert s(x.half()).dtype == torch.float16  # the caller's dtype back
    with pytest.raises(NSTError, match="exported in fp32"):
        Stylizer.load(exported / "model.onnx", precision="fp16")
    with pytest.raises(NSTError, match="fp32 or fp16"):
        Stylizer.load(exported / "model.onnx", precision="int8")
