"""The project's exception types.

Every error a user can cause (a bad file, a wrong option) is raised as a subclass of
:class:`NSTError`; the command-line entry points print its message on one line and exit non-zero.
"""

from __future__ import annotations

__all__ = ["NSTError", "ImageError", "KernelError", "MaskError", "WeightsError", "LossNetError"]


class NSTError(Exception):
    """Base class of every error the toolkit raises for bad input."""


class ImageError(NSTError):
    """An image cannot be read, is of a refused kind or size, or cannot be written."""


class MaskError(ImageError):
    """A mask cannot be read or cannot be matched to its target size."""


class WeightsError(NSTError):
    """A weights file is missing, malformed, unsafe, or does not fit the network."""


class LossNetError(NSTError):
    """A loss network or one of its layers is asked for in a way that cannot work."""


class KernelError(NSTError, ValueError):
    """A style-statistic op (:mod:`nst_deploy.kernels`) is given inputs or a backend it cannot take
    (a ValueError too, as such errors were before)."""
