"""Run-time controls of the feed-forward path: ``strength`` and ``preserve_color``.

Both act on the network's output and the photo it was given, as float32 ``(H, W, 3)`` arrays in
``[0, 1]`` (numpy only: the ONNX path runs them without torch). They work in YIQ, the luminance /
chroma split that the optimization's ``preserve_color`` uses (:func:`nst_deploy.optimize.rgb_to_yiq`).

* ``preserve_color``: the output's luminance with the photo's chroma (I and Q), as in Gatys et al.
  (2016), "Preserving color in neural artistic style transfer".
* ``strength`` in ``[0, 1]``: 0 the photo, 1 the network's output. A plain fade of two images whose
  textures differ averages their local detail away: halfway, the local contrast of the luminance
  drops below both images' (a washed-out double exposure). Here the luminance is blended as local
  mean plus local detail, and the detail is rescaled so that its local standard deviation is the blend
  of the two images' (a variance-preserving blend, as in Heitz and Neyret 2018, applied to local
  statistics over a ``(2r+1)^2`` box); chroma is faded. Strength 0 and 1 give the photo and the
  output exactly (up to float rounding).

Every statistic is local (a box of radius :data:`RADIUS`), so a tiled run gives the untiled result
wherever its tiles' outputs are exact (the tiles' overlap exceeds the network's receptive field, far
more than ``RADIUS``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import NSTError

__all__ = ["RADIUS", "RGB_TO_YIQ", "apply_controls", "check_strength", "local_contrast", "parse_style",
           "style_weights"]

#: Radius in pixels of the box the local statistics of ``strength`` are taken over.
RADIUS = 8
#: The most the detail is amplified: where both images are flat, noise is not blown up.
MAX_GAIN = 2.0

#: RGB to YIQ (NTSC), the colour split of every luminance-only operation in the package.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ).astype(np.float32)


def check_strength(strength: object) -> float:
    """``strength`` as a float in ``[0, 1]``, else one :class:`NSTError` line."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)):
        raise NSTError(f"strength must be a number from 0 to 1, got {strength!r}")
    s = float(strength)
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise NSTError(f"strength must be from 0 to 1, got {strength!r}")
    return s


def _style_index(key, n_styles: int, names) -> int:
    """A style's index from its index or, where the network's metadata names its styles, its name."""
    if isinstance(key, str) and not key.strip().lstrip("-").isdigit():
        if key in (names or []):
            return list(names).index(key)
        have = f"its styles are {', '.join(names)}" if names else "its styles have no names: give an index"
        raise NSTError(f"style '{key}' does not exist: {have}")
    try:
        if isinstance(key, bool) or int(key) != float(key):
            raise ValueError
        k = int(key)
    except (TypeError, ValueError):
        raise NSTError(f"style {key!r} is not an index or a style name") from None
    if not 0 <= k < n_styles:
        raise NSTError(f"style {k} does not exist: this network has styles 0 to {n_styles - 1}")
    return k


def style_weights(style, n_styles: int, names=None) -> np.ndarray:
    """The style vector of a multistyle network (float32 ``(n_styles,)``, summing to one) from an index or a
    style's name (``names``: the metadata's, in order), a ``{index or name: weight}`` dict or a sequence of
    ``n_styles`` weights (any array or tensor).

    Raises:
        NSTError: an index out of range, an unknown name, a negative or non-finite weight, all weights 0, or
            a vector of another length.
    """
    if isinstance(style, bool):
        raise NSTError(f"style must be an index, {{index: weight}} or {n_styles} weights, not {style!r}")
    if isinstance(style, (str, int, float, np.integer, np.floating)):  # one style: a one-entry blend
        style = {style: 1.0}
    if isinstance(style, dict):
        w = np.zeros(n_styles, np.float64)
        for k, v in style.items():
            w[_style_index(k, n_styles, names)] += float(v)
    else:
        try:
            w = np.asarray(style.detach().cpu() if hasattr(style, "detach") else style, np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise NSTError(f"style must be an index, {{index: weight}} or {n_styles} weights, not {style!r}") from None
        if w.size != n_styles:
            raise NSTError(f"a style vector of this network has {n_styles} weights, got {w.size}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise NSTError("style weights must be finite, at least 0, and not all 0")
    return (w / w.sum()).astype(np.float32)


def parse_style(text: str) -> str | dict[str, float]:
    """``nst run --style``: one style by index or name (``3``, ``the_scream``) or a blend of
    ``style:weight`` pairs (``0:0.5,3:0.5``); the network resolves names (:func:`style_weights`)."""
    text = text.strip()
    if ":" not in text:
        if not text:
            raise NSTError("--style is empty: give an index (3), a name or style:weight pairs (0:0.5,3:0.5)")
        return text
    out: dict[str, float] = {}
    try:
        for part in text.split(","):
            k, v = part.split(":")
            out[k.strip()] = out.get(k.strip(), 0.0) + float(v)
    except ValueError:
        raise NSTError(f"--style '{text}': give an index (3), a name or style:weight pairs (0:0.5,3:0.5)") from None
    return out


def _box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean of ``x`` (H, W) over a ``(2r+1)^2`` box clipped to the image (an integral image)."""
    h, w = x.shape
    c = np.zeros((h + 1, w + 1), np.float64)
    c[1:, 1:] = np.cumsum(np.cumsum(x, 0, dtype=np.float64), 1)
    y0 = np.clip(np.arange(h) - r, 0, h)
    y1 = np.clip(np.arange(h) + r + 1, 0, h)
    x0 = np.clip(np.arange(w) - r, 0, w)
    x1 = np.clip(np.arange(w) + r + 1, 0, w)
    s = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (s / area).astype(np.float32)


def local_contrast(y: np.ndarray, r: int = RADIUS) -> np.ndarray:
    """The local standard deviation of a luminance map ``(H, W)`` over ``(2r+1)^2`` boxes."""
    m = _box_mean(y, r)
    return np.sqrt(np.maximum(_box_mean(y * y, r) - m * m, 0.0))


def _blend_luma(yp: np.ndarray, yo: np.ndarray, s: float, r: int) -> np.ndarray:
    mp, mo = _box_mean(yp, r), _box_mean(yo, r)
    dp, do = yp - mp, yo - mo
    sp = np.sqrt(np.maximum(_box_mean(dp * dp, r), 0.0))
    so = np.sqrt(np.maximum(_box_mean(do * do, r), 0.0))
    d = (1.0 - s) * dp + s * do
    sb = np.sqrt(np.maximum(_box_mean(d * d, r), 0.0))
    target = (1.0 - s) * sp + s * so
    gain = np.clip(target / np.maximum(sb, 1e-6), 1.0, MAX_GAIN)
    return (1.0 - s) * mp + s * mo + gain * d


def apply_controls(output: np.ndarray, photo: np.ndarray, strength: float = 1.0, preserve_color: bool = False,
                   radius: int = RADIUS) -> np.ndarray:
    """The controls applied to one output ``(H, W, 3)`` and its photo (the same shape), float32 in [0, 1]."""
    s = check_strength(strength)
    if s == 1.0 and not preserve_color:
        return output
    if output.shape != photo.shape:
        raise NSTError(f"the photo is {photo.shape[1]}x{photo.shape[0]}, the output {output.shape[1]}x"
                       f"{output.shape[0]}: the controls need them the same size")
    if s == 0.0:
        return np.ascontiguousarray(photo, dtype=np.float32)
    yo = output.astype(np.float32) @ RGB_TO_YIQ.T
    yp = photo.astype(np.float32) @ RGB_TO_YIQ.T
    if preserve_color:
        yo[..., 1:] = yp[..., 1:]
    out = np.empty_like(yo)
    if s == 1.0:
        out[:] = yo
    else:
        out[..., 0] = _blend_luma(yp[..., 0], yo[..., 0], s, radius)
        out[..., 1:] = (1.0 - s) * yp[..., 1:] + s * yo[..., 1:]
    return np.clip(out @ _YIQ_TO_RGB.T, 0.0, 1.0).astype(np.float32)
