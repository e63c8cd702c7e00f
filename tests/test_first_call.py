"""The first call users time: nst run on an ONNX model imports neither torch nor onnx."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
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
