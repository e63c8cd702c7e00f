"""nst serve's checks before any server starts (no serve extra needed)."""

from __future__ import annotations

import importlib.util

import pytest

from nst_deploy.errors import NSTError
from nst_deploy.serve import Server, model_names, repository_models, server_files


def test_without_the_extra_one_line_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(NSTError, match=r"pip install 'nst-deploy\[serve\]'"):
        server_files()


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
    ({"instances": 0}, "instances must be at least 1"),
    ({"http_port": 8001, "grpc_port": 8001}, "must differ"),
    ({"http_port": 70000}, "between 1 and 65535"),
    ({"max_queue_delay_ms": -1}, "max_queue_delay_ms"),
    ({"request_timeout_s": -2}, "request_timeout_s"),
    ({"device": "tpu"}, "cpu or gpu"),
    ({"memory_mb": 0}, "memory_mb must be positive"),
])
def test_bad_arguments_are_refused_before_anything_starts(kwargs, match):
    with pytest.raises(NSTError, match=match):
        Server(["starry_night"], **kwargs)


def test_model_names(tmp_path):
    names = model_names(["starry_night", "scream=the_scream"])
    assert list(names) == ["starry_night", "scream"] and names["scream"].name == "johnson__the_scream.pt"
    with pytest.raises(NSTError, match="two models named 'starry_night'"):
        model_names(["starry_night", "johnson__starry_night"])
    with pytest.raises(NSTError, match="does not exist"):
        model_names(["no_such_style"])
    with pytest.raises(NSTError, match="not allowed"):
        model_names(["bad name=starry_night"])
    with pytest.raises(NSTError, match="no model to serve"):
        model_names([])


def test_repository_models(tmp_path):
    (tmp_path / "a_python").mkdir()
    (tmp_path / "a_python" / "config.pbtxt").write_text('name: "a_python"\nbackend: "python"\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text('name: "a"\nplatform: "onnxruntime_onnx"\n')
    assert list(repository_models(tmp_path, [])) == ["a_python"]
    with pytest.raises(NSTError, match="platform onnxruntime_onnx"):
        repository_models(tmp_path, ["a"])
    with pytest.raises(NSTError, match="has no model 'b'"):
        repository_models(tmp_path, ["b"])
    with pytest.raises(NSTError, match="not a folder"):
        repository_models(tmp_path / "nothing", [])
