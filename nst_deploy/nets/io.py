"""Model files of trained feed-forward networks.

A model file is a plain ``torch.save`` of a dictionary of tensors and plain values (read back with
``weights_only=True``, never unpickling code)::

    {"format": "nst-deploy-model", "version": 1, "arch": "johnson", "config": {...},
     "state_dict": {...}, "meta": {"style": ..., "training": {...}, ...}}

``meta`` says what the network was trained for (style image and its digest, training options and
their digest, toolkit version); the export issue copies it into exported files.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import NSTError
from ..fsutil import atomic_write, load_torch
from ..models import MODELS_DIR, bundled_models, model_path  # noqa: F401 (re-exported)

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "bundled_models", "load_model", "model_path", "read_model", "save_model"]

MODEL_FORMAT = "nst-deploy-model"
MODEL_VERSION = 1


def save_model(path: str | os.PathLike, net: nn.Module, arch: str, meta: dict | None = None,
               half: bool = False) -> Path:
    """Write ``net`` (its ``config()`` and weights) atomically; ``half`` stores fp16 weights."""
    path = Path(path)
    sd = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
          for k, v in net.state_dict().items()}
    state = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "arch": arch, "config": net.config(),
             "state_dict": sd, "meta": dict(meta or {})}
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(state, fh)
    except OSError as e:
        raise NSTError(f"cannot write model '{path}': {e.strerror or e}") from None
    return path


#: What a model file should be, added to the errors of files that are not one.
_MODEL_HINT = "expected the .pt file that 'nst train' writes, or a bundled model's name"


def _not_a_model(path: Path) -> str | None:
    """Why ``path`` is another kind of model file (TorchScript, ONNX), as one message; else ``None``.

    Looked at before ``torch.load``, whose errors for such files are long explanations of ``weights_only``.
    Anything else (empty, text, a damaged archive, random bytes) is left to ``load_torch``, which says why.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None  # load_torch reports it
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return (f"'{path}' is not an nst train model: it is a TorchScript file (an nst-export output?); "
                    f"{_MODEL_HINT}")
        return None
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ModelProto starts with ir_version (field 1)
        try:
            import onnx

            proto = onnx.load_model_from_string(path.read_bytes())
            if proto.ir_version > 0 and len(proto.graph.node) > 0:
                return f"'{path}' is not an nst train model: it is an ONNX file (an nst-export output?); {_MODEL_HINT}"
        except Exception:  # noqa: BLE001, S110 - not ONNX after all
            pass
    return None


def read_model(path: str | os.PathLike) -> dict:
    """Read and check a model file's dictionary (no network built)."""
    path = Path(path)
    if not path.is_file():
        raise NSTError(f"model '{path}' does not exist")
    why = _not_a_model(path)
    if why is not None:
        raise NSTError(why)
    try:
        state = load_torch(path, "model")
    except NSTError as e:
        raise NSTError(f"{e} ({_MODEL_HINT})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise NSTError(f"'{path}' is not an nst-deploy model file")
    if state.get("version") != MODEL_VERSION:
        raise NSTError(f"model '{path}' has format version {state.get('version')}, this release reads "
                       f"{MODEL_VERSION}")
    for key, kind in (("arch", str), ("config", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(state.get(key), kind):
            raise NSTError(f"model '{path}' is malformed: '{key}' is missing or not a {kind.__name__}")
    return state


def load_model(path: str | os.PathLike, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict]:
    """Build the network of a model file; returns ``(net in eval mode, meta)``.

    Raises:
        NSTError: missing, unreadable or malformed file, unknown architecture, weights that do not fit.
    """
    from . import create

    state = read_model(path)
    net = create(state["arch"], **state["config"])
    sd = state["state_dict"]
    expected = net.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise NSTError(f"model '{path}' does not fit a {state['arch']} network: {what}")
    for k, ref in expected.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(ref.shape):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise NSTError(f"model '{path}': {k} has shape {got}, expected {tuple(ref.shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise NSTError(f"model '{path}': {k} holds NaN or infinite values")
    net.load_state_dict({k: sd[k].to(expected[k].dtype) for k in expected})
    net.eval().requires_grad_(False)
    return net.to(device=device, dtype=dtype), dict(state["meta"], arch=state["arch"], config=state["config"])
