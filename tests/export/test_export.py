"""nst-export: TorchScript and ONNX artifacts, metadata, parity verification, manifest, errors."""

from __future__ import annotations

import hashlib
import json

import onnx
import pytest
import torch
from nst_deploy.export import export_model, verify
from nst_deploy.export.cli import main

from nst_deploy.errors import NSTError
from nst_deploy.nets import create
from nst_deploy.nets.io import bundled_models, save_model


@pytest.mark.parametrize("name", ["johnson__starry_night", "johnson__the_scream"])
def test_bundled_models_export_and_verify(name, tmp_path):
    m = export_model(bundled_models()[name], tmp_path)
    for fmt in ("torchscript", "onnx"):
        a = m["artifacts"][fmt]
        assert hashlib.sha256((tmp_path / a["file"]).read_bytes()).hexdigest() == a["sha256"]
        v = m["verification"][fmt]
        assert v["max_abs_error"] < 1e-4 and [1, 3, 37, 53] in v["shapes"] and [2, 3, 64, 64] in v["shapes"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["arch"] == "johnson" and props["style"].endswith(".jpg") and props["input"]["range"] == [0.0, 1.0]
    assert model.opset_import[0].version >= 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3 and isinstance(dims[2], str) and isinstance(dims[3], str)
    extra = {"nst_meta.json": ""}
    torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra["nst_meta.json"])["training_digest"] == props["training_digest"]
    assert not any(n.op_type == "ConvTranspose" for n in model.graph.node)
    assert any(n.op_type == "Resize" for n in model.graph.node)  # the resize-convolutions


def test_multimodal_exports(tmp_path):
    torch.manual_seed(0)
    save_model(tmp_path / "mm.pt", create("multimodal", width=0.25, levels=2), "multimodal",
               {"style": "x", "output_scale": 2})
    m = export_model(tmp_path / "mm.pt", tmp_path / "out")
    assert m["verification"]["onnx"]["max_abs_error"] < 1e-3


def test_verification_catches_a_different_network(tmp_path):
    torch.manual_seed(0)
    net = create("johnson", width=0.25)
    save_model(tmp_path / "m.pt", net, "johnson", {"style": "x"})
    export_model(tmp_path / "m.pt", tmp_path / "out", formats=["onnx"], check=False)
    with pytest.raises(NSTError, match="onnx differs from eager"):
        verify(create("johnson", width=0.25).eval(), {"onnx": tmp_path / "out" / "model.onnx"})


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert main([str(tmp_path / "bad.pt"), "-o", str(tmp_path / "o")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(["starry_night", "-o", str(tmp_path / "o"), "--format", "tflite"]) == 2
    assert "unknown format tflite" in capsys.readouterr().err
    assert main(["starry_night", "-o", str(tmp_path / "o"), "--format", "onnx", "--opset", "13"]) == 2
    assert "17 or later" in capsys.readouterr().err
    assert main(["nope", "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
