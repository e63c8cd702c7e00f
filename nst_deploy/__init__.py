"""nst-deploy: neural style transfer from research algorithms to production deployment.

Importing the package is cheap: it imports torch, numpy and Pillow, never triton, and never
initializes CUDA.
"""

from .errors import ImageError, LossNetError, MaskError, NSTError, WeightsError
from .images import load_image, load_mask, save_image
from .lossnets import LOSSNETS, LossNetwork, layer_names, load_lossnet
from .optimize import StylizeOptions, stylize
from .recipes import PRESETS, read_recipe
from .runtime import Stylizer
from .weights import Preprocessing, Weights, load_weights

__version__ = "0.1.0"

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
