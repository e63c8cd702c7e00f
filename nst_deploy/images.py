"""Safe image input and output.

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

import io
import math
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageOps

from .errors import ImageError, MaskError
from .fsutil import atomic_write, check_writable

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

#: Formats that are decoded at all. Anything else is refused before decoding.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
#: Default limit on the number of pixels an input may declare (about 10000 x 10000).
DEFAULT_MAX_PIXELS = 100_000_000

#: Output formats by file suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_PIL_LIMIT_LOCK = threading.Lock()
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------------------- loading
def open_allowed(path: str | os.PathLike) -> Image.Image:
    """Open (not decode) an allowed-format file, with Pillow's global bomb check off: callers check sizes."""
    with _PIL_LIMIT_LOCK:  # Pillow's own bomb check is a global; ours replaces it
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path, formats=ALLOWED_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = old


def pixel_limit(max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int | None:
    """The pixel limit in force: ``max_pixels``, or for the default the ``NST_MAX_PIXELS``
    environment variable when it is set (how a CLI user raises it)."""
    env = os.environ.get("NST_MAX_PIXELS")
    if max_pixels != DEFAULT_MAX_PIXELS or not env:
        return max_pixels
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise ImageError(f"NST_MAX_PIXELS must be a positive number of pixels, not {env!r}")
    return value


def _open(path: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    """Open, check and fully decode an image file; EXIF orientation applied."""
    path = Path(path)
    max_pixels = pixel_limit(max_pixels)
    if path.is_dir():
        raise ImageError(f"cannot read image '{path}': it is a folder")
    if not path.is_file():
        raise ImageError(f"cannot read image '{path}': no such file")
    try:
        with warnings.catch_warnings():  # Pillow warns about skipped corrupt tags; the pixels decide
            warnings.simplefilter("ignore", UserWarning)
            img = open_allowed(path)
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(
                    f"refusing image '{path}': it declares {w}x{h} = {w * h:,} pixels, over the limit of "
                    f"{max_pixels:,} (if you trust the file, raise it: NST_MAX_PIXELS=N, or max_pixels= in Python)"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refusing image '{path}': {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"cannot read image '{path}': not a {', '.join(ALLOWED_FORMATS)} image"
        ) from None
    except Exception as e:  # noqa: BLE001 - every decoder failure becomes our error
        raise ImageError(f"cannot read image '{path}': {_reason(e)}") from None
    if min(img.size) < 1:
        raise ImageError(f"cannot read image '{path}': it has no pixels")
    return img


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _background(color) -> np.ndarray:
    """A background colour as three floats in [0, 1]; accepts names, '#rrggbb' or 0-255 triples."""
    try:
        if isinstance(color, str):
            rgb = ImageColor.getrgb(color)[:3]
        else:
            rgb = tuple(color)
            if len(rgb) != 3:
                raise ValueError
        arr = np.array(rgb, dtype=np.float32)
    except (ValueError, TypeError):
        raise ImageError(f"invalid background colour {color!r}: use a name, '#rrggbb' or (r, g, b)") from None
    if arr.max() > 1.0 or all(isinstance(c, int) for c in rgb):
        arr = arr / 255.0
    if arr.min() < 0 or arr.max() > 1:
        raise ImageError(f"invalid background colour {color!r}: components must be 0-255")
    return arr


def _rescale(arr: np.ndarray, what: str) -> np.ndarray:
    """Scale integer (mode I) or float (mode F) pixel data to [0, 1] without clipping."""
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ImageError(f"its {what} pixel data contains NaN or infinity")
    lo, hi = float(arr.min()), float(arr.max())
    if what == "32-bit integer" and lo >= 0 and hi <= 65535:
        return (arr / 65535.0).astype(np.float32)  # 16-bit data stored as mode I
    if what == "float" and lo >= 0 and hi <= 1:
        return arr.astype(np.float32)
    if hi == lo:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _channels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels of ``img`` as float32 (H, W, 1 or 3) in [0, 1] and an alpha (H, W, 1) or None."""
    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("LA" if mode == "L" else "RGBA")
    elif mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    elif mode == "1":
        img = img.convert("L")
    mode = img.mode
    if mode.startswith("I;16"):
        return (np.asarray(img).astype(np.float32) / 65535.0)[..., None], None
    if mode == "I":
        return _rescale(np.asarray(img), "32-bit integer")[..., None], None
    if mode == "F":
        return _rescale(np.asarray(img), "float")[..., None], None
    if mode in ("L", "RGB"):
        arr = np.asarray(img).astype(np.float32) / 255.0
        return (arr[..., None] if arr.ndim == 2 else arr), None
    if mode in ("LA", "RGBA"):
        arr = np.asarray(img).astype(np.float32) / 255.0
        return arr[..., :-1], arr[..., -1:]
    raise ImageError(f"unsupported image mode {mode!r}")


def from_pil(img: Image.Image, background=(255, 255, 255)) -> torch.Tensor:
    """Convert a decoded PIL image to an RGB float tensor ``(1, 3, H, W)`` in ``[0, 1]``.

    Transparent pixels are composited over ``background``:
    ``out = a * rgb + (1 - a) * background``. 16-bit data (``I;16*``) is divided by 65535; mode ``I``
    is divided by 65535 when its values lie in ``[0, 65535]`` (how 16-bit files decode) and is
    otherwise stretched from its own minimum and maximum to ``[0, 1]``; mode ``F`` is kept when in
    ``[0, 1]`` and stretched otherwise. Grey images are repeated to three channels.
    """
    color, alpha = _channels(img)
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    if alpha is not None:
        color = color * alpha + _background(background) * (1.0 - alpha)
    t = torch.from_numpy(np.ascontiguousarray(color, dtype=np.float32)).permute(2, 0, 1)
    return t.unsqueeze(0).contiguous()


def target_size(
    height: int, width: int, size: int | None = None, pixels: int | None = None
) -> tuple[int, int]:
    """The ``(H, W)`` to resize to: longest side ``size``, or about ``pixels`` pixels; aspect kept."""
    if size is not None and pixels is not None:
        raise ImageError("give either a longest side (size) or a pixel count (pixels), not both")
    if size is not None:
        if size < 1:
            raise ImageError(f"invalid size {size}: must be a positive number of pixels")
        scale = size / max(height, width)
    elif pixels is not None:
        if pixels < 1:
            raise ImageError(f"invalid pixel count {pixels}: must be positive")
        scale = math.sqrt(pixels / (height * width))
    else:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


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
    img = _open(path, max_pixels)
    w, h = img.size
    _check_min(h, w, min_side, f"image '{path}'")
    try:
        x = from_pil(img, background)
    except ImageError as e:
        raise ImageError(f"cannot read image '{path}': {e}") from None
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
        img = _open(path, max_pixels)
    except ImageError as e:
        raise MaskError(str(e).replace("image", "mask", 1)) from None
    try:
        color, alpha = _channels(img)
    except ImageError as e:
        raise MaskError(f"cannot read mask '{path}': {e}") from None
    value = color[..., 0] if color.shape[-1] == 1 else color @ _LUMA
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
    if not torch.isfinite(t).all():
        raise ImageError("refusing to save: the image contains NaN or infinite values")
    return t.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """An 8-bit PIL image (``RGB`` or ``L``) from a ``[0, 1]`` tensor ``(C, H, W)`` or ``(1, C, H, W)``."""
    arr = np.rint(_as_hwc(x) * 255.0).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, "L" if arr.shape[-1] == 1 else "RGB")


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _encode_png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey or RGB) from float (H, W, C) in [0, 1]; Pillow cannot write 16-bit RGB."""
    h, w, c = arr.shape
    px = np.rint(arr * 65535.0).astype(">u2").reshape(h, w * c).view(np.uint8)
    rows = np.zeros((h, 1 + px.shape[1]), dtype=np.uint8)  # filter byte 0 (None) per row
    rows[:, 1:] = px
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 0, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", ihdr),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
        _png_chunk(b"IEND", b""),
    ])


def save_image(x: torch.Tensor, path: str | os.PathLike, *, bits: int = 8, quality: int = 95) -> Path:
    """Write a ``[0, 1]`` image tensor to PNG (8 or 16 bit), JPEG or TIFF, atomically.

    The file is encoded in memory, written to a temporary file in the destination folder, fsynced
    and renamed over ``path``: a crash leaves the previous file or the new one, never a partial one.

    Raises:
        ImageError: unknown extension, bad tensor (shape, NaN), bit depth not available for the
            format, or a destination folder that does not exist.
    """
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(
            f"cannot save '{path}': unknown extension '{path.suffix}' (use .png, .jpg or .tif)"
        )
    if bits not in (8, 16):
        raise ImageError(f"cannot save '{path}': bit depth must be 8 or 16, not {bits}")
    if bits == 16 and fmt != "PNG":
        raise ImageError(f"cannot save '{path}': 16-bit output is written as PNG only")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise ImageError(f"cannot save '{path}': folder '{path.parent}' does not exist")
    arr = _as_hwc(x)
    if bits == 16:
        data = _encode_png16(arr)
    else:
        buf = io.BytesIO()
        img = to_pil(torch.from_numpy(arr).permute(2, 0, 1))
        options = {"quality": int(quality)} if fmt == "JPEG" else {}
        img.save(buf, format=fmt, **options)
        data = buf.getvalue()
    try:
        with atomic_write(path) as fh:
            fh.write(data)
    except OSError as e:
        raise ImageError(f"cannot save '{path}': {e.strerror or e}") from None
    return path


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
        if not torch.isfinite(x).all():
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


def check_output(path: Path, *inputs, quality: int | None = None) -> None:
    """Before any work: ``path`` can be written in a format :func:`save_image` writes, is none of
    ``inputs`` (images the run reads), and a JPEG ``quality`` is in range."""
    for src in inputs:
        if isinstance(src, (str, os.PathLike)) and Path(src).exists() and path.exists() \
                and os.path.samefile(src, path):
            raise ImageError(f"the output '{path}' is an input image: give another -o")
    if quality is not None and not 1 <= quality <= 100:
        raise ImageError(f"--quality must be between 1 and 100, not {quality}")
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ImageError(f"cannot write '{path}': use one of {', '.join(sorted(SAVE_FORMATS))}")
    check_writable(path)


def source_size(img) -> tuple[int, int]:
    """``(H, W)`` of an image argument as given (a file: its declared size, EXIF rotation applied;
    ``(0, 0)`` for a file that cannot be read)."""
    if isinstance(img, (str, Path)):
        try:
            with open_allowed(img) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
        except Exception:  # noqa: BLE001 - the file was decoded already; fall back to nothing
            return 0, 0
        return h, w
    if isinstance(img, Image.Image):
        return img.size[1], img.size[0]
    return tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else tuple(img.shape[:2])
