"""The first call users time: nst run on an ONNX model imports neither torch nor onnx."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from nst_deploy.export import export_model
from PIL import Image

from nst_deploy.nets.io import bundled_models
from nst_deploy.runtime import Stylizer

from .conftest import DATA

PROBE = """
import sys
from nst_deploy.cli import main
code = main(["run", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "-q"])
heavy = sorted(m for m in ("torch", "onnx", "triton") if m in sys.modules)
print("exit", code, "heavy", ",".join(heavy) or "none")
"""


def test_nst_run_on_onnx_needs_no_torch(tmp_path):
    export_model(bundled_models()["johnson__starry_night"], tmp_path / "exp", formats=("onnx",), check=False)
    photo = tmp_path / "photo.jpg"
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((120, 80)).save(photo, quality=95)
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "exp" / "model.onnx"), str(photo), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["exit", "0", "heavy", "none"], proc.stdout + proc.stderr
    # the picture is the runtime's, through the torch path of the same model
    got = np.asarray(Image.open(out)).astype(int)
    want = np.asarray(Stylizer.load(tmp_path / "exp" / "model.onnx")(Image.open(photo))).astype(int)
    assert got.shape == (80, 120, 3) and np.abs(got - want).max() <= 1


def test_the_package_and_runtime_import_without_torch():
    code = ("import sys, nst_deploy, nst_deploy.runtime, nst_deploy.imageio, nst_deploy.cli; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_a_bundled_model_runs_from_its_onnx_copy_without_torch(tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((120, 80)).save(photo)
    out = tmp_path / "out.png"
    proc = subprocess.run([sys.executable, "-c", PROBE, "starry_night", str(photo), str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.stdout.split() == ["exit", "0", "heavy", "none"], proc.stdout + proc.stderr
    # on the CPU it is the int8 copy's picture, close to the bundled model file's
    from nst_deploy.models import bundled_onnx

    pt = bundled_models()["johnson__starry_night"]
    got = np.asarray(Image.open(out)).astype(int)
    int8 = np.asarray(Stylizer.load(bundled_onnx(pt))(Image.open(photo))).astype(int)
    assert np.abs(got - int8).max() <= 1
    want = np.asarray(Stylizer.load(pt)(Image.open(photo))).astype(float)
    psnr = 10 * np.log10(255.0**2 / np.mean((got - want) ** 2))
    assert psnr > 30, psnr


def test_an_image_that_needs_tiles_falls_back_to_the_model_file(tmp_path):
    """The bundled ONNX copies hold no tiles graph: an image over the memory budget runs from the model
    file, tiled, and gives the tiled result of the runtime."""
    from nst_deploy.cli import main

    photo = tmp_path / "photo.png"
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((460, 300)).save(photo)
    assert main(["run", "starry_night", str(photo), "-o", str(tmp_path / "out.png"), "--memory-mb", "40", "-q",
                 "--device", "cpu"]) == 0
    s = Stylizer.load(bundled_models()["johnson__starry_night"], device="cpu", memory_mb=40)
    assert s.needs_tiles(1, 300, 460)
    want = np.asarray(s(np.asarray(Image.open(photo)).astype(np.float32) / 255))
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6


def test_stylizer_fallback_takes_over_for_images_that_need_tiles(tmp_path):
    from nst_deploy.errors import NSTError
    from nst_deploy.models import bundled_onnx

    pt = bundled_models()["johnson__starry_night"]
    s = Stylizer.load(bundled_onnx(pt), device="cpu", memory_mb=40, fallback=pt)
    small = np.random.default_rng(0).random((48, 64, 3), dtype=np.float32)
    s(small)
    assert s.fallback is not None and s.backend == "onnx"  # small images stay on the ONNX copy
    big = np.random.default_rng(1).random((300, 460, 3), dtype=np.float32)
    got = s(big)
    assert s.fallback is None and s.backend == "eager"
    want = Stylizer.load(pt, device="cpu", memory_mb=40)(big)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(NSTError, match="does not exist"):
        Stylizer.load(bundled_onnx(pt), fallback=tmp_path / "gone.pt")


def test_exact_fp16_weights_are_stored_as_fp16(tmp_path):
    """nst-export stores float32 weights that are exact float16 values (a model saved with half=True, as the
    bundled ones are) as float16 with a Cast: half the file, the same output; other weights stay float32."""
    import onnx
    from nst_deploy.export.core import store_exact_fp16

    from nst_deploy.nets import create
    from nst_deploy.nets.io import save_model

    export_model(bundled_models()["johnson__starry_night"], tmp_path / "b", formats=("onnx",), check=False)
    bundled = onnx.load(str(tmp_path / "b" / "model.onnx"))
    halves = [i for i in bundled.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    casts = [n for n in bundled.graph.node if n.op_type == "Cast" and n.input[0].endswith("__fp16")]
    assert len(halves) == len(casts) > 10
    # random float32 weights are not exact float16: nothing changes
    path = save_model(tmp_path / "m.pt", create("johnson", width=0.25), "johnson", {"style": "x"})
    export_model(path, tmp_path / "exp", formats=("onnx",))
    model = onnx.load(str(tmp_path / "exp" / "model.onnx"))
    assert store_exact_fp16(model) == 0


def test_hidden_gpus_are_not_present():
    # without torch loaded the driver's files are asked; CUDA_VISIBLE_DEVICES="" hides them as it does from CUDA
    code = "from nst_deploy.devices import gpu_present; print(gpu_present())"
    for value in ("", "-1"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": value})
        assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_onnx_sessions_take_the_thread_count_from_omp_num_threads(tmp_path, monkeypatch):
    from nst_deploy.backends import open_backend

    export_model(bundled_models()["johnson__starry_night"], tmp_path / "exp", formats=("onnx",), check=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    b = open_backend(tmp_path / "exp" / "model.onnx", device="cpu")
    assert b.session.get_session_options().intra_op_num_threads == 1
