"""A contact sheet: one photograph through every bundled style, labelled (``nst run --sheet``).

Torch-free: the bundled models run from their int8 ONNX copies (:func:`nst_deploy.models.bundled_onnx`)
through the :class:`~nst_deploy.runtime.Stylizer`; Pillow draws the grid and the labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import NSTError

__all__ = ["contact_sheet"]

LABEL_H = 28
GAP = 6


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the fixed bitmap font
        return ImageFont.load_default()


def contact_sheet(photo: np.ndarray, models: dict[str, os.PathLike], *, columns: int | None = None,
                  strength: float = 1.0, preserve_color: bool = False, device: str = "cpu",
                  progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
    """The photo (float32 ``(H, W, 3)`` in [0, 1]) and its stylization by each of ``models`` (name ->
    model file; every style of a multistyle network), labelled, in a grid (``columns``: default the square
    root of the count, at most 5); returns the sheet as a float32 ``(H, W, 3)`` array in [0, 1]."""
    from PIL import Image, ImageDraw

    from .models import bundled_onnx
    from .runtime import Stylizer

    if not models:
        raise NSTError("no models to put on the sheet")
    h, w = photo.shape[:2]
    cells = [("photo", (np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8))]
    for i, (name, path) in enumerate(models.items()):
        if progress:
            progress(i, len(models), name)
        path = Path(path)
        s = Stylizer.load(bundled_onnx(path) or path, device=device)
        # a multistyle network: one picture per style, named as its metadata names them
        named = s.style_names
        styles = [(f"{k}: {named[k] if k < len(named) else name}", k) for k in range(s.n_styles)] or [(name, None)]
        for label, k in styles:
            y = s(photo, style=k, strength=strength, preserve_color=preserve_color)
            if y.shape[:2] != (h, w):  # an upscaling network: back to the photo's size
                y = np.asarray(Image.fromarray((y * 255 + 0.5).astype(np.uint8)).resize((w, h),
                                                                                        Image.Resampling.LANCZOS))
            else:
                y = (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)
            cells.append((label, y))
    if progress:
        progress(len(models), len(models), "")
    n = len(cells)
    cols = columns or min(5, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * w + (cols + 1) * GAP, rows * (h + LABEL_H) + (rows + 1) * GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, arr) in enumerate(cells):
        r, c = divmod(k, cols)
        x0, y0 = GAP + c * (w + GAP), GAP + r * (h + LABEL_H + GAP)
        sheet.paste(Image.fromarray(arr), (x0, y0))
        text = name.replace("_", " ")
        for size in (16, 14, 12, 10, 9):  # the largest font the label fits in at the cell's width
            font = _label_font(size)
            if draw.textlength(text, font=font) <= w - 4:
                break
        while len(text) > 4 and draw.textlength(text, font=font) > w - 4:
            text = text[:-2] + "…"
        draw.text((x0 + w // 2, y0 + h + LABEL_H // 2), text, fill=(20, 20, 20), font=font, anchor="mm")
    return np.asarray(sheet, np.float32) / np.float32(255.0)
