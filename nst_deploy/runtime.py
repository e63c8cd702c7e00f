"""The unified runtime: ``Stylizer.load(path)`` runs an exported (or trained) network.

Backends, chosen from the file:

* ONNX (``.onnx``): onnxruntime, execution providers in the order TensorRT, CUDA, CPU as available
  (or ``providers``); external data must stay inside the model's folder;
* TorchScript (``model.pt`` written by ``nst-export``): loaded with ``torch.jit.load`` only after its
  sha256 matches the ``manifest.json`` beside it (TorchScript is code: never loaded unverified);
* a model file of ``nst train``: the eager network.

The metadata (architecture, style, input/output contract) comes from the file itself. Calls take a
PIL image, an ``HxWx3`` uint8 array or an RGB float tensor ``(N, 3, H, W)`` in ``[0, 1]`` and return
the same kind; inputs are checked before inference. A Stylizer may be called from several threads.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import NSTError
from .fsutil import sha256_file

__all__ = ["Stylizer"]

MAX_SIDE = 16384
MIN_SIDE = 8


def _onnx_providers(device: str, providers) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise NSTError(f"execution providers {', '.join(missing)} are not available here "
                           f"(available: {', '.join(available)})")
        return list(providers)
    order = ["CPUExecutionProvider"] if device == "cpu" else \
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in available] or ["CPUExecutionProvider"]


def _check_external_data(path: Path) -> None:
    """Refuse ONNX external-data references that leave the model's folder."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(path), load_external_data=False)
    root = path.parent.resolve()
    for t in _get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise NSTError(f"ONNX model '{path}': external data '{location}' points outside its folder")


class Stylizer:
    """A loaded style network, ready to run (see the module docstring)."""

    def __init__(self, backend: str, run, meta: dict, device: torch.device):
        self.backend = backend
        self._run = run
        self.meta = meta
        self.device = device
        self._lock = threading.Lock()

    # -- loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", providers: list[str] | None = None,
             precision: str | None = None) -> Stylizer:
        """Load an ONNX file, a verified TorchScript file or an ``nst train`` model file.

        Raises:
            NSTError: missing, truncated or malformed file; TorchScript not matching its manifest.
        """
        path = Path(path)
        if not path.is_file():
            raise NSTError(f"model '{path}' does not exist")
        if precision not in (None, "fp32"):
            raise NSTError(f"precision '{precision}' is not supported yet (fp32 only)")
        from .optimize import _device

        dev = _device(device)
        if path.suffix.lower() == ".onnx":
            return cls._load_onnx(path, dev, providers)
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:2] != b"PK":
            raise NSTError(f"model '{path}' cannot be read: it is neither ONNX nor a PyTorch archive")
        # Tell a TorchScript archive (it holds code/) from a model file by listing the zip: torch.load
        # would hand a TorchScript archive to torch.jit.load, running it before any verification.
        try:
            with zipfile.ZipFile(path) as zf:
                scripted = any("/code/" in n for n in zf.namelist())
        except (zipfile.BadZipFile, OSError) as e:
            raise NSTError(f"model '{path}' cannot be read: {e}") from None
        if scripted:
            return cls._load_torchscript(path, dev)
        from .nets.io import load_model

        net, meta = load_model(path, device=dev)
        return cls("eager", net, meta, dev)

    @classmethod
    def _load_onnx(cls, path: Path, dev: torch.device, providers) -> Stylizer:
        import onnxruntime as ort

        try:
            _check_external_data(path)
        except NSTError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"ONNX model '{path}' cannot be read: {str(e).strip().splitlines()[0][:160]}") from None
        try:
            opts = ort.SessionOptions()
            sess = ort.InferenceSession(str(path), sess_options=opts,
                                        providers=_onnx_providers(dev.type, providers))
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"ONNX model '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None
        meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
        inputs = sess.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise NSTError(f"ONNX model '{path}' does not take one NCHW image")
        name = inputs[0].name
        meta["providers"] = sess.get_providers()

        def run(x: torch.Tensor) -> torch.Tensor:  # onnxruntime sessions are safe to run concurrently
            return torch.from_numpy(sess.run(None, {name: x.cpu().numpy()})[0])

        return cls("onnx", run, meta, torch.device("cpu"))

    @classmethod
    def _load_torchscript(cls, path: Path, dev: torch.device) -> Stylizer:
        manifest_path = path.parent / "manifest.json"
        if not manifest_path.is_file():
            raise NSTError(f"refusing TorchScript '{path}': no manifest.json beside it to verify it against "
                           "(TorchScript is code; export with nst-export)")
        try:
            manifest = json.loads(manifest_path.read_text())
            entry = manifest["artifacts"]["torchscript"]
        except (OSError, ValueError, KeyError, TypeError):
            raise NSTError(f"refusing TorchScript '{path}': '{manifest_path}' has no torchscript entry") from None
        if entry.get("file") != path.name or entry.get("sha256") != sha256_file(path):
            raise NSTError(f"refusing TorchScript '{path}': its sha256 does not match '{manifest_path}' "
                           "(the file was changed after export)")
        extra = {"nst_meta.json": ""}
        try:
            module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"TorchScript '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None
        meta = json.loads(extra["nst_meta.json"] or "{}")
        module.eval()
        return cls("torchscript", module, meta, dev)

    # -- running
    def _tensor(self, image) -> tuple[torch.Tensor, str]:
        from PIL import Image

        if isinstance(image, Image.Image):
            from .images import from_pil

            return from_pil(image), "pil"
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise NSTError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0, "numpy"
        if isinstance(image, torch.Tensor):
            if image.dim() != 4 or image.shape[1] != 3:
                raise NSTError(f"expected an RGB tensor (N, 3, H, W), got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise NSTError(f"expected a floating-point tensor in [0, 1], got {image.dtype}")
            if not torch.isfinite(image).all():
                raise NSTError("the input tensor has NaN or Inf values")
            return image.detach().float(), "tensor"
        raise NSTError(f"expected a PIL image, numpy array or tensor, not {type(image).__name__}")

    def __call__(self, image: Any):
        """Stylize ``image`` (PIL, ``HxWx3`` uint8 array or ``(N, 3, H, W)`` tensor); returns the same kind."""
        x, kind = self._tensor(image)
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
            raise NSTError(f"image is {w}x{h}: sides must be between {MIN_SIDE} and {MAX_SIDE} pixels")
        with torch.inference_mode():
            y = self._run(x.contiguous()) if self.backend == "onnx" else self._run(x.to(self.device)).float().cpu()
        if kind == "tensor":
            return y.to(image.device)
        arr = (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        if kind == "numpy":
            return arr
        from PIL import Image

        return Image.fromarray(arr)
