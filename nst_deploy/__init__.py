"""nst-deploy: neural style transfer from research algorithms to production deployment.

Importing the package is cheap: the names below are imported on first use (torch, numpy and
Pillow with them; triton never, and CUDA is never initialized), so the command line starts at
once and answers Ctrl-C even while torch loads.
"""

from __future__ import annotations

import importlib

from .errors import ImageError, LossNetError, MaskError, NSTError, WeightsError

__version__ = "0.1.0"

#: The public names and the submodule each comes from, imported when first used.
_LAZY = {
    "load_image": "images", "load_mask": "images", "save_image": "images",
    "LOSSNETS": "lossnets", "LossNetwork": "lossnets", "layer_names": "lossnets", "load_lossnet": "lossnets",
    "StylizeOptions": "optimize", "stylize": "optimize",
    "PRESETS": "recipes", "read_recipe": "recipes",
    "Stylizer": "runtime",
    "Preprocessing": "weights", "Weights": "weights", "load_weights": "weights",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nst_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LOSSNETS",
    "ImageError",
    "LossNetError",
    "LossNetwork",
    "PRESETS",
    "MaskError",
    "NSTError",
    "Preprocessing",
    "StylizeOptions",
    "Stylizer",
    "WeightsError",
    "Weights",
    "__version__",
    "layer_names",
    "load_image",
    "load_lossnet",
    "load_mask",
    "load_weights",
    "read_recipe",
    "save_image",
    "stylize",
]
