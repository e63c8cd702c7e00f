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
from nst_deploy.nets.io import bundled_models, load_model, save_model


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
    assert "opsets 18 to 23" in capsys.readouterr().err
    assert main(["nope", "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp16", "fp16-io"])
def test_fp16_variants(precision, tmp_path):
    from nst_deploy.runtime import Stylizer

    m = export_model(bundled_models()["johnson__starry_night"], tmp_path, precision=precision)
    assert m["precision"] == precision and m["metadata"]["precision"] == precision
    for fmt in ("torchscript", "onnx", "onnx_tiles"):
        v = m["verification"][fmt]
        assert v["max_abs_error"] < 1e-2 and v["max_abs_error_vs_fp32"] < 2e-2 and len(v["shapes"]) >= 3
    model = onnx.load(str(tmp_path / "model.onnx"))
    io = onnx.TensorProto.FLOAT16 if precision == "fp16-io" else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == io
    assert model.graph.output[0].type.tensor_type.elem_type == io
    conv_weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)
    net, _ = load_model(bundled_models()["johnson__starry_night"])
    x = torch.rand(1, 3, 48, 72)
    with torch.no_grad():
        ref = net(x)
    for name in ("model.onnx", "model.pt"):
        s = Stylizer.load(tmp_path / name, precision="fp16")
        y = s(x)
        assert y.dtype == torch.float32 and (y - ref).abs().max() < 2e-2
        with pytest.raises(NSTError, match=f"exported in {precision}"):
            Stylizer.load(tmp_path / name, precision="fp32")


def test_static_export_with_triton_repository(tmp_path, capsys):
    from google.protobuf import descriptor_pool, message_factory, text_format

    from nst_deploy.runtime import Stylizer

    from .test_triton import _schema_file

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema_file())
    model_config = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))

    out, repo = tmp_path / "out", tmp_path / "repo"
    assert main(["starry_night", "-o", str(out), "--static", "64", "96", "--triton-repo", str(repo),
                 "--max-batch-size", "4", "--instances", "2"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["static"] == [64, 96] and "onnx_tiles" not in m["artifacts"]
    assert m["verification"]["onnx"]["shapes"] == [[1, 3, 64, 96], [2, 3, 64, 96]]
    shape = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape
    dims = [d.dim_value or d.dim_param for d in shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 96]
    cfg = text_format.Parse((repo / "johnson__starry_night" / "config.pbtxt").read_text(), model_config())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4 and list(cfg.input[0].dims) == [3, 64, 96]
    assert cfg.instance_group[0].count == 2
    assert (repo / "johnson__starry_night" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert (repo / "johnson__starry_night_torchscript" / "1" / "model.pt").is_file()
    s = Stylizer.load(out / "model.onnx")
    assert s(torch.rand(2, 3, 64, 96)).shape == (2, 3, 64, 96)
    with pytest.raises(NSTError, match="exported for 96x64"):
        s(torch.rand(1, 3, 64, 64))
    assert Stylizer.load(out / "model.pt")(torch.rand(1, 3, 40, 52)).shape == (1, 3, 40, 52)  # scripted: any size
    assert main(["starry_night", "-o", str(out), "--static", "63", "96"]) == 2
    assert "multiples of 4" in capsys.readouterr().err
    assert main(["starry_night", "-o", str(out), "--triton-repo", str(repo), "--instances", "0"]) == 2
    assert "instances" in capsys.readouterr().err
