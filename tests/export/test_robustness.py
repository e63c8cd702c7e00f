"""nst-export on bad input and interruptions: one error line, nothing partial, an exact output folder."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from nst_deploy.export import core
from nst_deploy.export.cli import main

from nst_deploy.errors import NSTError
from nst_deploy.nets import create
from nst_deploy.nets.io import save_model


@pytest.fixture
def small_model(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "small.pt", create("johnson", width=0.25), "johnson", {"style": "x"})


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _one_line(err: str, text: str) -> None:
    lines = [line for line in err.splitlines() if "error" in line or "Traceback" in line]
    assert lines == [next(line for line in lines if text in line)] and "Traceback" not in err


@pytest.mark.parametrize("existing", [False, True])
def test_interrupt_leaves_the_output_as_it_was(small_model, tmp_path, capsys, monkeypatch, existing):
    out = tmp_path / "work" / "sigexp"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    before = _tree(tmp_path)

    def interrupted(*args, **kwargs):  # Ctrl-C during the ONNX export, after the TorchScript file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(core, "export_onnx", interrupted)
    assert main([str(small_model), "-o", str(out), "--no-verify"]) == 130
    assert capsys.readouterr().err.strip().endswith("nst-export: interrupted; nothing written")
    assert _tree(tmp_path) == before  # no model.pt, no staging folder, no created parent folder


def test_opset_range_and_record(small_model, tmp_path, capsys, monkeypatch):
    for bad in ("99", "17", "13"):
        assert main([str(small_model), "-o", str(tmp_path / "o"), "--opset", bad, "--format", "onnx",
                     "--no-verify"]) == 2
        _one_line(capsys.readouterr().err, f"--opset {bad}: ONNX opsets 18 to 23 are supported")
    assert not (tmp_path / "o").exists()
    out = tmp_path / "op19"
    assert main([str(small_model), "-o", str(out), "--opset", "19", "--format", "onnx", "--static", "32", "32",
                 "--no-verify"]) == 0
    assert json.loads((out / "manifest.json").read_text())["opset"] == 19
    assert [o.version for o in onnx.load(str(out / "model.onnx")).opset_import if o.domain in ("", "ai.onnx")] == [19]

    class Proto:  # the exporter silently keeping another opset is caught
        opset_import = [onnx.helper.make_opsetid("", 18)]

    monkeypatch.setattr(onnx, "load", lambda *a, **k: Proto())
    with pytest.raises(NSTError, match="asked for opset 20 but wrote opset 18"):
        core.export_onnx(create("johnson", width=0.25).eval(), {"precision": "fp32"}, tmp_path / "x.onnx", 20,
                         static=(32, 32))
    assert not (tmp_path / "x.onnx").exists()


def test_triton_repo_checked_before_any_work(small_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the Triton repository was checked")

    monkeypatch.setattr(core, "load_model", no_work)
    assert main([str(small_model), "-o", str(tmp_path / "exp2"), "--triton-repo", str(tmp_path / "afile"),
                 "--format", "onnx", "--no-verify"]) == 2
    _one_line(capsys.readouterr().err, "exists and is not a folder")
    (tmp_path / "repo" / "small").mkdir(parents=True)
    (tmp_path / "repo" / "small" / "README").write_text("someone else's")
    assert main([str(small_model), "-o", str(tmp_path / "exp2"), "--triton-repo", str(tmp_path / "repo"),
                 "--format", "onnx", "--no-verify"]) == 2
    _one_line(capsys.readouterr().err, "which nst-export did not write")
    assert not (tmp_path / "exp2").exists()


def test_previous_export_replaced_exactly(small_model, tmp_path, capsys):
    out = tmp_path / "stale"
    out.mkdir()
    for name in ("model.pt", "model.onnx", "model.tiles.onnx"):
        (out / name).write_bytes(b"old " + name.encode())
    (out / "manifest.json").write_text(json.dumps({"model": "old.pt", "artifacts": {"onnx": {"file": "model.onnx"}}}))
    (out / "notes.txt").write_text("the user's")
    assert main([str(small_model), "-o", str(out), "--format", "torchscript", "--no-verify"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.pt", "notes.txt"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"] == "small.pt" and list(m["artifacts"]) == ["torchscript"] and m["opset"] is None
    assert (out / "model.pt").read_bytes() != b"old model.pt" and (out / "notes.txt").read_text() == "the user's"
    # artifact names without an nst-export manifest are not ours to replace: refused, nothing touched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.onnx").write_bytes(b"someone's model")
    capsys.readouterr()
    assert main([str(small_model), "-o", str(foreign), "--format", "torchscript", "--no-verify"]) == 2
    _one_line(capsys.readouterr().err, "no nst-export manifest.json")
    assert [p.name for p in foreign.iterdir()] == ["model.onnx"]


def test_unwritable_output(small_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert main([str(small_model), "-o", str(tmp_path / "file" / "x"), "--format", "torchscript",
                 "--no-verify"]) == 2
    _one_line(capsys.readouterr().err, "is not a folder")
    # a folder the checks let through but the file system refuses (read-only, immutable): one line, nothing left
    before = _tree(tmp_path)

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(core.tempfile, "mkdtemp", refused)
    assert main([str(small_model), "-o", str(tmp_path / "new" / "x"), "--format", "torchscript", "--no-verify"]) == 2
    _one_line(capsys.readouterr().err, "cannot write the output folder")
    assert _tree(tmp_path) == before


def test_model_that_is_not_a_train_model(tmp_path, capsys):
    torch.manual_seed(0)
    net = create("johnson", width=0.25).eval()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "scripted.pt"))
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", vi[:1], vi[1:])), str(tmp_path / "m.onnx"))
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name, text in (("scripted.pt", "it is a TorchScript file"), ("m.onnx", "it is an ONNX file"),
                       ("notes.txt", "it is a text file"), ("empty.pt", "the file is empty")):
        assert main([str(tmp_path / name), "-o", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        _one_line(err, text)
        assert "weights_only" not in err and "train" in err
    assert not (tmp_path / "o").exists()
