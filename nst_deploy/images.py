"""Safe image input and output, as tensors (the file side, without torch, is :mod:`nst_deploy.imageio`).

Loading turns any allowed file into an RGB float tensor of shape ``(1, 3, H, W)`` in ``[0, 1]``:

* formats: an explicit allow-list (PNG, JPEG, WEBP, TIFF, BMP); Pillow's other decoders are never
  consulted, whatever the file's extension or first bytes;
* modes: ``1``, ``L``, ``LA``, ``P`` (with or without transparency), ``RGB``, ``RGBA`` (composited on
  a background colour), ``CMYK``, ``YCbCr``, 16-bit ``I;16*`` (divided by 65535, never clipped),
  ``I`` and ``F`` (see :func:`from_pil`);
* EXIF orientation is applied;
* the declared pixel count is checked against a limit *before* decoding (decompression bombs);
* resizing by longest side or by pixel count uses antialiased bicubic interpolation.

Every failure, whatever the bytes, is raised as :class:`~nst_deploy.errors.ImageError`.
Saving encodes in memory first and then writes atomically (see :mod:`nst_deploy.fsutil`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .contract import all_finite
from .errors import ImageError, MaskError
from .imageio import (  # noqa: F401 (the file side, re-exported: nst_deploy.images is the public module)
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    LUMA,
    SAVE_FORMATS,
    channels,
    check_output,
    open_allowed,
    open_checked,
    pixel_limit,
    read_rgb,
    rgb_array,
    source_size,
    target_size,
    write_image,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "SAVE_FORMATS",
    "as_image_tensor",
    "check_output",
    "cover_crop",
    "fit_mask",
    "from_pil",
    "load_image",
    "load_mask",
    "resize",
    "resize_longest",
    "save_image",
    "source_size",
    "target_size",
    "to_pil",
]

def from_pil(img: Image.Image, background=(255, 255, 255)) -> torch.Tensor:
    """Convert a decoded PIL image to an RGB float tensor ``(1, 3, H, W)`` in ``[0, 1]``.

    Transparent pixels are composited over ``background``:
    ``out = a * rgb + (1 - a) * background``. 16-bit data (``I;16*``) is divided by 65535; mode ``I``
    is divided by 65535 when its values lie in ``[0, 65535]`` (how 16-bit files decode) and is
    otherwise stretched from its own minimum and maximum to ``[0, 1]``; mode ``F`` is kept when in
    ``[0, 1]`` and stretched otherwise. Grey images are repeated to three channels.
    """
    return torch.from_numpy(rgb_array(img, background)).permute(2, 0, 1).unsqueeze(0).contiguous()


def resize(x: torch.Tensor, hw: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize ``(N, C, H, W)`` to ``hw`` with antialiasing; values stay in ``[0, 1]``."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    y = F.interpolate(x, size=tuple(hw), mode=mode, align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0)


def _check_min(h: int, w: int, min_side: int | None, what: str) -> None:
    if min_side is not None and min(h, w) < min_side:
        raise ImageError(
            f"{what} is {w}x{h} pixels, too small: the loss network needs at least "
            f"{min_side}x{min_side} for its deepest layer"
        )


def load_image(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    pixels: int | None = None,
    background=(255, 255, 255),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Load an image file as an RGB tensor ``(1, 3, H, W)`` in ``[0, 1]``.

    Args:
        path: a PNG, JPEG, WEBP, TIFF or BMP file.
        size: resize so that the longest side has this many pixels.
        pixels: resize to about this many pixels (exclusive with ``size``).
        background: colour under transparent pixels (name, ``'#rrggbb'`` or 0-255 triple).
        max_pixels: refuse files declaring more pixels than this (``None``: no limit).
        min_side: refuse images (before and after resizing) whose shorter side is smaller, e.g.
            :meth:`LossNetwork.min_input_size` of the network that will see them.
        device, dtype: where and how to return the tensor.

    Raises:
        ImageError: for any file that cannot be read, is not allowed, or is too large or small.
    """
    arr = read_rgb(path, max_pixels=max_pixels, background=background)
    h, w = arr.shape[:2]
    _check_min(h, w, min_side, f"image '{path}'")
    x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
    hw = target_size(h, w, size, pixels)
    _check_min(*hw, min_side, f"image '{path}' resized to {hw[1]}x{hw[0]}")
    x = resize(x, hw)
    return x.to(device=device, dtype=dtype)


def load_mask(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    aspect_tolerance: float = 0.02,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Load a mask as one channel ``(1, 1, H, W)`` in ``[0, 1]``, resized to ``size = (H, W)``.

    The value is the image's luminance (0.299 R + 0.587 G + 0.114 B); transparent pixels count as 0.
    A mask is only resized when its aspect ratio matches the target's within ``aspect_tolerance``
    (relative); otherwise :class:`~nst_deploy.errors.MaskError` says both sizes.
    """
    try:
        img = open_checked(path, max_pixels)
    except ImageError as e:
        raise MaskError(str(e).replace("image", "mask", 1)) from None
    try:
        color, alpha = channels(img)
    except ImageError as e:
        raise MaskError(f"cannot read mask '{path}': {e}") from None
    value = color[..., 0] if color.shape[-1] == 1 else color @ LUMA
    if alpha is not None:
        value = value * alpha[..., 0]
    m = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))[None, None].clamp_(0.0, 1.0)
    if size is not None:
        m = fit_mask(m, size, f"mask '{path}'", aspect_tolerance)
    return m.to(device=device)


def fit_mask(m: torch.Tensor, size: tuple[int, int], name: str = "mask",
             aspect_tolerance: float = 0.02) -> torch.Tensor:
    """A ``(1, 1, h, w)`` mask resized (bilinear) to ``size = (H, W)``, if the aspect ratios agree.

    Raises:
        MaskError: the aspect ratios differ by more than ``aspect_tolerance`` (relative); it names
            both sizes.
    """
    th, tw = int(size[0]), int(size[1])
    mh, mw = m.shape[-2:]
    if abs((mw / mh) / (tw / th) - 1.0) > aspect_tolerance:
        raise MaskError(
            f"{name} is {mw}x{mh} but its target is {tw}x{th}: the aspect ratios differ "
            f"({mw / mh:.3f} vs {tw / th:.3f}), so it cannot be matched without distortion"
        )
    return resize(m, (th, tw), mode="bilinear")


# ------------------------------------------------------------------------------------------ saving
def _as_hwc(x: torch.Tensor) -> np.ndarray:
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"cannot save {type(x).__name__}: expected a torch tensor")
    t = x.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ImageError(f"cannot save a batch of {t.shape[0]} images to one file")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ImageError(
            f"cannot save tensor of shape {tuple(x.shape)}: expected (1|3, H, W) or (1, 3, H, W)"
        )
    t = t.to("cpu", torch.float32)
    if not all_finite(t):
        raise ImageError("refusing to save: the image contains NaN or infinite values")
    return t.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """An 8-bit PIL image (``RGB`` or ``L``) from a ``[0, 1]`` tensor ``(C, H, W)`` or ``(1, C, H, W)``."""
    arr = np.rint(_as_hwc(x) * 255.0).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, "L" if arr.shape[-1] == 1 else "RGB")


def save_image(x: torch.Tensor, path: str | os.PathLike, *, bits: int = 8, quality: int = 95) -> Path:
    """Write a ``[0, 1]`` image tensor to PNG (8 or 16 bit), JPEG or TIFF, atomically.

    The file is encoded in memory, written to a temporary file in the destination folder, fsynced
    and renamed over ``path``: a crash leaves the previous file or the new one, never a partial one.

    Raises:
        ImageError: unknown extension, bad tensor (shape, NaN), bit depth not available for the
            format, or a destination folder that does not exist.
    """
    return write_image(_as_hwc(x), path, bits=bits, quality=quality)


def as_image_tensor(img, what: str, size: int | None = None) -> torch.Tensor:
    """An image given as a path, PIL image, HxWx3 uint8 array or tensor, as (1, 3, H, W) in [0, 1].

    A file is decoded and resized to longest side ``size`` at once (other inputs are resized later).
    """
    if isinstance(img, (str, Path)):
        return load_image(img, size=size)
    if isinstance(img, Image.Image):
        return from_pil(img)
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ImageError(f"{what} array must be HxWx3 uint8, got {img.shape} {img.dtype}")
        if img.size == 0:
            raise ImageError(f"{what} array is empty: {img.shape}")
        return torch.from_numpy(img.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    if isinstance(img, torch.Tensor):
        x = img.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[:2] != (1, 3):
            raise ImageError(f"{what} tensor must be (1, 3, H, W) or (3, H, W) RGB, got {tuple(img.shape)}")
        if not x.is_floating_point():
            raise ImageError(f"{what} tensor must be floating point in [0, 1], got {x.dtype}")
        if x.numel() == 0:
            raise ImageError(f"{what} tensor is empty: {tuple(img.shape)}")
        if not all_finite(x):
            raise ImageError(f"{what} tensor has NaN or Inf values")
        return x.float().cpu().clamp(0.0, 1.0)
    raise ImageError(f"{what} must be a path, PIL image, numpy array or tensor, not {type(img).__name__}")


def resize_longest(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` resized so that its longest side is ``size`` (the aspect kept)."""
    return resize(x, target_size(x.shape[-2], x.shape[-1], size=size))


def cover_crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``x`` scaled to cover ``hw`` and centre-cropped to it (the aspect kept; nothing stretched)."""
    h, w = x.shape[-2:]
    scale = max(hw[0] / h, hw[1] / w)
    sh, sw = max(hw[0], round(h * scale)), max(hw[1], round(w * scale))
    y = resize(x, (sh, sw))
    top, left = (sh - hw[0]) // 2, (sw - hw[1]) // 2
    return y[..., top:top + hw[0], left:left + hw[1]]


