"""Image files without torch: safe decoding to float arrays, sizes, and atomic encoding.

The file side of :mod:`nst_deploy.images` (which adds tensors), for the paths that need no torch
(``nst run`` on an ONNX model):

* formats: an explicit allow-list (PNG, JPEG, WEBP, TIFF, BMP); Pillow's other decoders are never
  consulted, whatever the file's extension or first bytes;
* modes: ``1``, ``L``, ``LA``, ``P`` (with or without transparency), ``RGB``, ``RGBA`` (composited on
  a background colour), ``CMYK``, ``YCbCr``, 16-bit ``I;16*`` (divided by 65535, never clipped),
  ``I`` and ``F`` (see :func:`channels`);
* EXIF orientation is applied;
* the declared pixel count is checked against a limit *before* decoding (decompression bombs).

Every failure, whatever the bytes, is raised as :class:`~nst_deploy.errors.ImageError`. Saving
encodes in memory first and then writes atomically (see :mod:`nst_deploy.fsutil`).
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
from PIL import Image, ImageColor, ImageOps

from .errors import ImageError
from .fsutil import atomic_write, check_writable

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "SAVE_FORMATS",
    "check_output",
    "decode_rgb",
    "encode_image",
    "open_allowed",
    "open_checked",
    "pixel_limit",
    "read_rgb",
    "resize_array",
    "rgb_array",
    "source_size",
    "target_size",
    "write_image",
]

#: Formats that are decoded at all. Anything else is refused before decoding.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")
#: Default limit on the number of pixels an input may declare (about 10000 x 10000).
DEFAULT_MAX_PIXELS = 100_000_000
#: Output formats by file suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
_PIL_LIMIT_LOCK = threading.Lock()
#: Luminance weights (Rec. 601) of R, G, B.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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


def open_checked(path: str | os.PathLike, max_pixels: int | None, data: bytes | None = None) -> Image.Image:
    """Open, check and fully decode an image file (or the encoded image ``data``, ``path`` then only
    naming it in messages); EXIF orientation applied."""
    path = Path(path)
    max_pixels = pixel_limit(max_pixels)
    if data is None and path.is_dir():
        raise ImageError(f"cannot read image '{path}': it is a folder")
    if data is None and not path.is_file():
        raise ImageError(f"cannot read image '{path}': no such file")
    try:
        with warnings.catch_warnings():  # Pillow warns about skipped corrupt tags; the pixels decide
            warnings.simplefilter("ignore", UserWarning)
            img = open_allowed(path if data is None else io.BytesIO(data))
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
        raise ImageError(f"cannot read image '{path}': {reason(e)}") from None
    if min(img.size) < 1:
        raise ImageError(f"cannot read image '{path}': it has no pixels")
    return img


def reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def background_rgb(color) -> np.ndarray:
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


def channels(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
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


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png16(arr: np.ndarray) -> bytes:
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
    if type(img).__module__.startswith("torch"):  # a tensor (N, C, H, W) or (C, H, W)
        return tuple(img.shape[-2:])
    return tuple(img.shape[:2])


def rgb_array(img: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    """A decoded PIL image as RGB float32 ``(H, W, 3)`` in ``[0, 1]``: transparent pixels composited over
    ``background`` (``a * rgb + (1 - a) * background``), grey repeated to three channels."""
    color, alpha = channels(img)
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    if alpha is not None:
        color = color * alpha + background_rgb(background) * (1.0 - alpha)
    return np.ascontiguousarray(color, dtype=np.float32)


def resize_array(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Float ``(H, W, C)`` in ``[0, 1]`` resized to ``hw`` (Pillow's antialiased bicubic, channel by channel,
    in float: what :func:`nst_deploy.images.resize` computes with torch, up to rounding)."""
    h, w = int(hw[0]), int(hw[1])
    if arr.shape[:2] == (h, w):
        return arr
    out = np.empty((h, w, arr.shape[2]), np.float32)
    for c in range(arr.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(arr[..., c], dtype=np.float32), mode="F")
        out[..., c] = np.asarray(plane.resize((w, h), Image.Resampling.BICUBIC))
    return np.clip(out, 0.0, 1.0, out=out)


def read_rgb(path: str | os.PathLike, *, size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
             background=(255, 255, 255)) -> np.ndarray:
    """An image file as RGB float32 ``(H, W, 3)`` in ``[0, 1]``, its longest side resized to ``size``."""
    img = open_checked(path, max_pixels)
    try:
        arr = rgb_array(img, background)
    except ImageError as e:
        raise ImageError(f"cannot read image '{path}': {e}") from None
    return resize_array(arr, target_size(arr.shape[0], arr.shape[1], size)) if size is not None else arr


def decode_rgb(data: bytes, name: str = "<stdin>", *, size: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, background=(255, 255, 255)) -> np.ndarray:
    """:func:`read_rgb` of an encoded image held in memory (``name`` for messages)."""
    if not data:
        raise ImageError(f"cannot read image '{name}': it is empty")
    img = open_checked(name, max_pixels, data=data)
    try:
        arr = rgb_array(img, background)
    except ImageError as e:
        raise ImageError(f"cannot read image '{name}': {e}") from None
    return resize_array(arr, target_size(arr.shape[0], arr.shape[1], size)) if size is not None else arr


def encode_image(arr: np.ndarray, suffix: str = ".png", *, bits: int = 8, quality: int = 95) -> bytes:
    """Float ``(H, W, 1 or 3)`` in ``[0, 1]`` encoded as the format of ``suffix`` (what :func:`write_image`
    writes), in memory.

    Raises:
        ImageError: unknown suffix, NaN or infinite values, a bit depth not available for the format.
    """
    fmt = SAVE_FORMATS.get(suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot encode '{suffix}' images: use .png, .jpg or .tif")
    if bits not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, not {bits}")
    if bits == 16 and fmt != "PNG":
        raise ImageError("16-bit output is written as PNG only")
    if not np.isfinite(arr).all():
        raise ImageError("refusing to save: the image contains NaN or infinite values")
    arr = np.clip(arr, 0.0, 1.0)
    if bits == 16:
        return encode_png16(arr)
    px = np.rint(arr * 255.0).astype(np.uint8)
    img = Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px, "L" if px.shape[-1] == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": int(quality)} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image(arr: np.ndarray, path: str | os.PathLike, *, bits: int = 8, quality: int = 95) -> Path:
    """Write float ``(H, W, 1 or 3)`` in ``[0, 1]`` to PNG (8 or 16 bit), JPEG or TIFF, atomically.

    The file is encoded in memory, written to a temporary file in the destination folder, fsynced
    and renamed over ``path``: a crash leaves the previous file or the new one, never a partial one.

    Raises:
        ImageError: unknown extension, NaN or infinite values, a bit depth not available for the
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
    data = encode_image(arr, path.suffix, bits=bits, quality=quality)
    try:
        with atomic_write(path) as fh:
            fh.write(data)
    except OSError as e:
        raise ImageError(f"cannot save '{path}': {e.strerror or e}") from None
    return path
