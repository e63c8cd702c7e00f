"""The unified runtime: backends, parity with eager, refusal of unverified or broken files, inputs."""

from __future__ import annotations

import json
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
from nst_deploy.models import bundled_onnx
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
        # on the CPU, as the reference: on CUDA cuDNN's default TF32 convolutions differ by about 1e-3
        s = Stylizer.load(exported / name, device="cpu")
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
                     ("photo.jpg", "no such file"), (3, "image path, PIL image")]:
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
    big = max(model.graph.initializer, key=lambda t: onnx.numpy_helper.to_array(t).size)  # a conv weight
    raw = onnx.numpy_helper.to_array(big).tobytes()
    (tmp_path / "outside.bin").write_bytes(raw)
    for field in ("float_data", "int32_data", "raw_data"):
        big.ClearField(field)
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
    # the bundled model file itself, eager (nst run starry_night takes its int8 copy on the CPU)
    from nst_deploy.imageio import read_rgb

    ref = np.asarray(Stylizer.load(bundled_models()["johnson__starry_night"])(read_rgb(src, size=80)))
    ref = (np.clip(ref, 0, 1) * 255 + 0.5).astype(int)
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


def test_provider_options_and_engine_cache(monkeypatch, tmp_path):
    from nst_deploy.backends import provider_options
    from nst_deploy.devices import cache_dir

    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "c"))
    opts = dict(provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                 fp16=True))
    trt = opts["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "c" / "tensorrt")
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == "True"
    assert dict(provider_options(["TensorrtExecutionProvider"]))["TensorrtExecutionProvider"]["trt_fp16_enable"] \
        == "False"
    assert opts["CUDAExecutionProvider"] == {"cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert opts["CPUExecutionProvider"] == {}
    monkeypatch.delenv("NST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir("tensorrt") == str(tmp_path / "x" / "nst-deploy" / "tensorrt")
    Stylizer.load(bundled_onnx(bundled_models()["johnson__starry_night"]), device="cpu")
    assert not (tmp_path / "x" / "nst-deploy").exists()  # the CPU provider builds nothing


def test_tensorrt_fp16_engine_cached(monkeypatch, tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
        pytest.skip("onnxruntime has no TensorRT provider here")
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "cache"))
    export_model(bundled_models()["johnson__starry_night"], tmp_path / "fp16", formats=("onnx",), precision="fp16")
    x = torch.rand(1, 3, 128, 160)
    ref = Stylizer.load(tmp_path / "fp16" / "model.onnx", device="cpu", precision="fp16")(x)
    s = Stylizer.load(tmp_path / "fp16" / "model.onnx", device="cuda", providers=["TensorrtExecutionProvider"])
    assert s.meta["providers"][0] == "TensorrtExecutionProvider"
    assert (s(x.cuda()).float().cpu() - ref.float()).abs().max() < 3e-2
    assert any((tmp_path / "cache" / "tensorrt").iterdir())  # the engine is kept for the next process


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
    with pytest.raises(NSTError, match="fp32, fp16 or int8"):
        Stylizer.load(exported / "model.onnx", precision="bf16")
    with pytest.raises(NSTError, match="no int8 model beside it"):
        Stylizer.load(exported / "model.onnx", precision="int8")


# -- files of other models, failures of the backends, output checks

#: The metadata ``nst-export`` writes into an fp32 ONNX file with dynamic height and width (export/core.py).
NST_META = {"arch": "johnson", "style": "x.jpg", "output_scale": 1, "precision": "fp32", "static": None,
            "format": "onnx", "input": {"layout": "NCHW", "colour": "RGB", "range": [0.0, 1.0], "dtype": "float32"},
            "output": {"layout": "NCHW", "colour": "RGB", "range": [0.0, 1.0], "dtype": "float32"}}


class _Lambda(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, image):
        return self.fn(image)


def _onnx_of(path: Path, fn, *, shape=(1, 3, 16, 16), dynamic: bool | str = True, meta: dict | None = NST_META,
             names=("image", "stylized"), dtype=torch.float32, **extra_meta) -> Path:
    """A small ONNX graph of ``fn`` (the legacy exporter: fast), with ``meta`` (plus ``extra_meta``) as nst-export
    writes it, or no metadata for ``meta=None``; ``dynamic="batch"`` fixes height and width."""
    import warnings

    axes = {names[0]: {0: "batch", 2: "height", 3: "width"}, names[1]: {0: "batch", 2: "oh", 3: "ow"}}
    if dynamic == "batch":  # height and width fixed
        axes, dynamic = {names[0]: {0: "batch"}, names[1]: {0: "batch"}}, True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Lambda(fn), (torch.rand(*shape).to(dtype),), str(path), dynamo=False,
                          input_names=[names[0]], output_names=[names[1]], dynamic_axes=axes if dynamic else None)
    if meta is not None:
        model = onnx.load(str(path))
        for key, value in dict(meta, **extra_meta).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case, match", [
    ("static_no_meta", "no nst-export metadata"),
    ("static_16", "fixed batch of 1"),
    ("static_hw", r"fixed height or width \(input 16x16, output 16x16\)"),
    ("gray_output", "output 'stylized' has 1 channel, not 3"),
    ("named_input", "input is named 'input', not 'image'"),
    ("rank3", "input 'image' has rank 3, not 4"),
    ("fp16_graph", "tensor\\(float16\\), but its metadata's precision fp32 needs tensor\\(float\\)"),
    ("meta_static", "metadata says static 32x32 images, but its input 'image' takes anyxany images"),
    ("fixed_batch", "fixed batch of 1"),
    ("bad_scale", "malformed metadata: output_scale"),
    ("other_format", "format 'keras'"),
])
def test_onnx_of_another_model_refused_at_load(tmp_path, case, match):
    p = tmp_path / f"{case}.onnx"
    same = lambda x: x * 0.5  # noqa: E731
    if case == "static_no_meta":
        _onnx_of(p, same, dynamic=False, meta=None)
    elif case == "static_16":
        _onnx_of(p, same, dynamic=False)
    elif case == "static_hw":
        _onnx_of(p, same, dynamic="batch")
    elif case == "gray_output":
        _onnx_of(p, lambda x: x.mean(1, keepdim=True))
    elif case == "named_input":
        _onnx_of(p, same, names=("input", "stylized"))
    elif case == "rank3":
        _onnx_of(p, same, shape=(3, 16, 16), dynamic=False)
    elif case == "fp16_graph":
        _onnx_of(p, same, dtype=torch.float16)
    elif case == "meta_static":
        _onnx_of(p, same, static=[32, 32])
    elif case == "fixed_batch":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Lambda(same), (torch.rand(1, 3, 16, 16),), str(p), dynamo=False,
                              input_names=["image"], output_names=["stylized"],
                              dynamic_axes={"image": {2: "h", 3: "w"}, "stylized": {2: "h", 3: "w"}})
        model = onnx.load(str(p))
        for key, value in NST_META.items():
            e = model.metadata_props.add()
            e.key, e.value = key, json.dumps(value)
        onnx.save(model, str(p))
    elif case == "bad_scale":
        _onnx_of(p, same, output_scale="two")
    elif case == "other_format":
        _onnx_of(p, same, format="keras")
    for warmup in (True, False):  # refused by the graph's signature, before any inference
        with pytest.raises(NSTError, match=match) as err:
            Stylizer.load(p, warmup=warmup)
        assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_tiles_graph_refused_as_a_model(exported):
    with pytest.raises(NSTError, match="tiles graph"):
        Stylizer.load(exported / "model.tiles.onnx")


def test_onnx_that_fails_or_misbehaves_at_inference(tmp_path):
    halves = _onnx_of(tmp_path / "halves.onnx",
                      lambda x: torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear"))
    # images run as arrays (session.run: the wrong shape comes back and is named), tensors bound in place
    # (IO binding: onnxruntime refuses to write the wrong shape)
    with pytest.raises(NSTError, match=r"halves.onnx' returned a float32 array of shape \(1, 3, 32, 32\) for a "
                                       r"1x3x64x64 input") as err:
        Stylizer.load(halves)  # the warm-up
    assert "\n" not in str(err.value)
    s = Stylizer.load(halves, warmup=False)
    with pytest.raises(NSTError, match=r"failed on a 2x3x40x56 input") as err:
        s(torch.rand(2, 3, 40, 56))
    assert err.value.__cause__ is not None and "\n" not in str(err.value)
    with pytest.raises(NSTError, match=r"returned a float32 array of shape \(1, 3, 20, 28\)"):
        s(np.zeros((40, 56, 3), np.uint8))
    nan = _onnx_of(tmp_path / "nan.onnx", lambda x: torch.log(x - 2.0))
    with pytest.raises(NSTError, match="returned NaN or Inf values"):
        Stylizer.load(nan)
    with pytest.raises(NSTError, match="returned NaN or Inf values"):
        Stylizer.load(nan, warmup=False)(torch.rand(1, 3, 40, 56))
    ok = _onnx_of(tmp_path / "ok.onnx", lambda x: 1.0 - x)  # the right contract: accepted and run
    x = torch.rand(2, 3, 40, 56)
    assert torch.allclose(Stylizer.load(ok)(x), 1.0 - x)


def _forged_torchscript(d: Path, fn) -> Path:
    """A TorchScript file of ``fn`` with nst metadata and a manifest that matches it (forged, but verified)."""
    from nst_deploy.fsutil import sha256_file

    d.mkdir()
    path = d / "model.pt"
    meta = dict(NST_META, format="torchscript")
    torch.jit.save(torch.jit.trace(_Lambda(fn), torch.rand(1, 3, 16, 16)), str(path),
                   _extra_files={"nst_meta.json": json.dumps(meta)})
    manifest = {"artifacts": {"torchscript": {"file": "model.pt", "sha256": sha256_file(path)}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_torchscript_output_is_checked(tmp_path):
    gray = _forged_torchscript(tmp_path / "gray", lambda x: x.mean(1, keepdim=True))
    with pytest.raises(NSTError, match=r"returned a torch.float32 tensor of shape \(1, 1, 64, 64\)"):
        Stylizer.load(gray)
    s = Stylizer.load(gray, warmup=False)
    for x in (torch.rand(2, 3, 40, 56), np.zeros((40, 56, 3), np.uint8)):
        with pytest.raises(NSTError, match=r"shape \((2|1), 1, 40, 56\).*float tensor of shape \((2|1), 3, 40, 56\)"):
            s(x)
    nan = _forged_torchscript(tmp_path / "nan", lambda x: x * float("nan"))
    with pytest.raises(NSTError, match="NaN or Inf"):
        Stylizer.load(nan)
    fails = _forged_torchscript(tmp_path / "fails", lambda x: x.reshape(x.shape[0], 3, 16, 16) * 1.0)
    with pytest.raises(NSTError, match=r"model.pt' failed on a 1x3x64x64 input.*: shape '\[1, 3, 16, 16\]' is "
                       r"invalid for input of size 12288$") as err:
        Stylizer.load(fails)  # the interpreter's error itself, not its trace
    assert err.value.__cause__ is not None and "\n" not in str(err.value) and "Traceback" not in str(err.value)
    ok = _forged_torchscript(tmp_path / "ok", lambda x: 1.0 - x)
    assert Stylizer.load(ok)(torch.zeros(1, 3, 24, 32)).eq(1.0).all()


@pytest.mark.parametrize("kind", ["onnx_gray", "onnx_halves", "torchscript_gray"])
def test_nst_run_refuses_other_models_cleanly(tmp_path, capsys, kind):
    if kind == "onnx_gray":
        model = _onnx_of(tmp_path / "m.onnx", lambda x: x.mean(1, keepdim=True))
    elif kind == "onnx_halves":
        model = _onnx_of(tmp_path / "m.onnx",
                         lambda x: torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear"))
    else:
        model = _forged_torchscript(tmp_path / "ts", lambda x: x.mean(1, keepdim=True))
    out = tmp_path / "o.png"
    capsys.readouterr()
    assert main(["run", str(model), str(DATA / "chelsea.jpg"), "-o", str(out), "--size", "64", "-q"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and all(line.startswith("nst: ") for line in lines), err
    errors = [line for line in lines if line.startswith("nst: error:")]
    assert len(errors) == 1 and str(model) in errors[0] and "warning" not in err, err
    assert not out.exists()


def test_empty_batch_and_empty_images(exported):
    for name in ("model.onnx", "model.pt"):
        s = Stylizer.load(exported / name)
        y = s(torch.rand(0, 3, 40, 56))
        assert y.shape == (0, 3, 40, 56) and y.dtype == torch.float32
        assert s(torch.rand(0, 3, 40, 56, dtype=torch.float64)).dtype == torch.float64
        for bad in (torch.rand(1, 3, 0, 56), torch.rand(1, 3, 40, 0), torch.rand(0, 3, 0, 0),
                    np.zeros((0, 56, 3), np.uint8), Image.new("RGB", (56, 0))):
            with pytest.raises(NSTError, match="no pixels"):
                s(bad)
        with pytest.raises(NSTError, match="between 8 and 16384"):
            s(torch.rand(0, 3, 4, 56))  # an empty batch of a refused size is still refused


@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_bad_tensor_inputs_each_one_error(exported, name):
    s = Stylizer.load(exported / name)
    x = torch.rand(1, 3, 24, 32)
    inf = x.clone()
    inf[0, 1, 2, 3] = float("inf")
    nan = x.clone()
    nan[0, 0, 5, 5] = float("nan")
    for bad, msg in [(torch.rand(1, 1, 24, 32), r"RGB tensor \(N, 3, H, W\), got \(1, 1, 24, 32\)"),
                     (torch.rand(1, 4, 24, 32), r"got \(1, 4, 24, 32\)"),
                     (torch.rand(3, 24, 32), r"got \(3, 24, 32\)"),
                     (torch.rand(1, 1, 3, 24, 32), r"got \(1, 1, 3, 24, 32\)"),
                     (torch.zeros(1, 3, 24, 32, dtype=torch.int64), "floating-point tensor"),
                     (torch.zeros(1, 3, 24, 32, dtype=torch.bool), "floating-point tensor"),
                     (nan, "NaN or Inf"), (inf, "NaN or Inf"),
                     (np.zeros((24, 32, 4), np.uint8), "HxWx3 uint8 or float32"),
                     (np.zeros((24, 32, 3), np.float64), "HxWx3 uint8 or float32"),
                     (np.full((24, 32, 3), np.nan, np.float32), "NaN or Inf")]:
        with pytest.raises(NSTError, match=msg):
            s(bad)


@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_float_arrays_in_and_out(exported, name):
    """An HxWx3 float32 array in [0, 1] (how nst run passes a decoded image) gives a float32 array, equal to
    the tensor path's result; whole and tiled alike."""
    s = Stylizer.load(exported / name)
    x = torch.rand(1, 3, 40, 56)
    arr = x[0].permute(1, 2, 0).numpy().copy()
    y = s(arr)
    assert y.dtype == np.float32 and y.shape == (40, 56, 3)
    ref = s(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(y - ref).max() < 1e-5
    s.memory_mb = 20
    big = torch.rand(1, 3, 150, 230)
    assert s.needs_tiles(1, 150, 230)
    tiled = s(big[0].permute(1, 2, 0).numpy().copy())
    assert tiled.dtype == np.float32 and np.abs(tiled - s(big)[0].permute(1, 2, 0).numpy()).max() < 1e-5


def test_backend_errors_wrapped_out_of_memory_left(exported, monkeypatch):
    s = Stylizer.load(exported / "model.onnx", warmup=False)
    x = torch.rand(1, 3, 24, 32)

    def raises(message):
        def run(_):
            raise RuntimeError(message)
        return run

    s.engine.run = raises("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions\n index: 2 Got: 24")
    with pytest.raises(NSTError, match=r"model.onnx' failed on a 1x3x24x32 input .*: Got invalid dimensions "
                       r"index: 2 Got: 24$") as err:
        s(x)
    assert isinstance(err.value.__cause__, RuntimeError)
    s.engine.run = raises("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
    with pytest.raises(RuntimeError, match="allocate memory"):  # left as it is: nst run turns it into advice
        s(x)


def test_tiles_are_checked_too(exported, monkeypatch):
    s = Stylizer.load(exported / "model.onnx")
    stats_of, _ = s.engine.stats_runners()
    x = torch.rand(1, 3, 150, 230)
    s.memory_mb = 20
    assert s.needs_tiles(1, 150, 230)
    for bad, match in ((lambda t, st: t[:, :1], r"returned a torch.float32 tensor of shape \(1, 1, "),
                       (lambda t, st: t * float("nan"), "NaN or Inf"),
                       (lambda t, st: t.reshape(7), "failed on a 1x3x")):
        monkeypatch.setattr(s.engine, "stats_runners", lambda bad=bad: (stats_of, bad))
        with pytest.raises(NSTError, match=match):
            s(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_sees_every_value(dtype):
    from nst_deploy.contract import all_finite

    x = torch.rand(2, 3, 17, 9, dtype=torch.float32).to(dtype)
    assert all_finite(x) and all_finite(x.transpose(2, 3)) and all_finite(x.numpy() if dtype != torch.bfloat16 else x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[1, 2, 16, 8] = bad  # the last value
        assert not all_finite(y) and not all_finite(y.transpose(2, 3)) and not all_finite(y[1:])
        if dtype != torch.bfloat16:
            assert not all_finite(y.numpy())
    assert not all_finite(torch.full((1, 3, 4, 4), float("nan"), requires_grad=True))
