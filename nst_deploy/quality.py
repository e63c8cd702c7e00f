"""How stylized, how faithful, how clean: measures of a stylized image against its photo and painting.

Several measures, because no single figure captures what people see:

* **style ratio**: the VGG19 Gram distance of the output to the painting, over the photo's own
  (conv1_1 .. conv5_1; per layer ``||G(x) - G(s)||_F / ||G(s)||_F``, averaged). 1 means no more like
  the painting than the photo was; lower is more stylized.
* **content ratio**: the relu4_2 feature distance of the output to the photo, over the painting's
  (resized to the photo's size). 0 means the photo unchanged; 1 as far from the photo as the
  painting itself.
* **palette ratio**: the sliced Wasserstein distance in CIE Lab between the output's pixels and the
  painting's, over the photo's own: how far the colours moved toward the painting's palette.
* **border ratio**: the mean gradient magnitude in a band along the border over the interior's (a
  fringe along the borders shows as a ratio well above the photo's own).

Images are ``(1, 3, H, W)`` tensors in ``[0, 1]``; the measures run on the CPU by default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .images import cover_crop, resize_longest
from .lossnets import LossNetwork, load_lossnet

__all__ = ["STYLE_LAYERS", "CONTENT_LAYER", "Judge", "Prepared", "Scores", "drift", "lab", "sliced_wasserstein"]

STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER = "relu4_2"


@dataclass
class Scores:
    """The measures of one output (see the module docstring)."""

    style_ratio: float
    content_ratio: float
    palette_ratio: float
    border_ratio: float
    photo_border_ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in ``[0, 1]`` (``(..., 3)``) to CIE Lab (D65)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = c @ np.array([[0.4124564, 0.2126729, 0.0193339], [0.3575761, 0.7151522, 0.1191920],
                        [0.1804375, 0.0721750, 0.9503041]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 64, samples: int = 4096,
                       seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance between two point clouds ``(N, D)`` and ``(M, D)`` (each subsampled to
    ``samples`` points, seeded): the mean over random unit directions of the distance between the
    projected distributions (quantiles compared)."""
    rng = np.random.default_rng(seed)
    a = a[rng.choice(len(a), min(samples, len(a)), replace=False)]
    b = b[rng.choice(len(b), min(samples, len(b)), replace=False)]
    dirs = rng.normal(size=(projections, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    q = np.linspace(0.0, 1.0, 257)
    pa = np.quantile(a @ dirs.T, q, axis=0)
    pb = np.quantile(b @ dirs.T, q, axis=0)
    return float(np.abs(pa - pb).mean())


def _pixels(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).reshape(-1, 3).double().numpy()


def border_ratio(x: torch.Tensor, band: int = 8) -> float:
    """Mean gradient magnitude within ``band`` pixels of the border over the interior's."""
    g = x[0].mean(0)
    gy, gx = (g[1:, :-1] - g[:-1, :-1]).abs(), (g[:-1, 1:] - g[:-1, :-1]).abs()
    mag = (gx + gy).double()
    h, w = mag.shape
    inner = torch.zeros_like(mag, dtype=torch.bool)
    inner[band:h - band, band:w - band] = True
    if not inner.any() or inner.all():
        return float("nan")
    return float(mag[~inner].mean() / mag[inner].mean().clamp_min(1e-12))


class Judge:
    """The measures for outputs of one painting (its statistics computed once).

    Args:
        painting: the style image ``(1, 3, H, W)``.
        size: the long side the measures see (images are resized to it).
        net: a loaded VGG19 (default: the bundled weights on the CPU).
    """

    def __init__(self, painting: torch.Tensor, size: int = 512, net: LossNetwork | None = None):
        self.net = net or load_lossnet("vgg19", device="cpu")
        self.size = size
        self.painting = resize_longest(painting.float(), size)
        with torch.no_grad():
            feats = self.net(self.painting, list(STYLE_LAYERS))
        self.style_grams = {k: self._gram(v) for k, v in feats.items()}
        self.painting_lab = lab(_pixels(self.painting))

    @staticmethod
    def _gram(f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        f = f.reshape(c, h * w).double()
        return f @ f.T / (h * w)

    def style_distance(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            feats = self.net(x, list(STYLE_LAYERS))
        d = [float(torch.linalg.norm(self._gram(feats[k]) - g) / torch.linalg.norm(g))
             for k, g in self.style_grams.items()]
        return float(np.mean(d))

    def prepare(self, photo: torch.Tensor) -> Prepared:
        """The photo's own measures, computed once for scoring several outputs of it (:meth:`score`)."""
        photo = resize_longest(photo.float(), self.size)
        with torch.no_grad():
            fp = self.net(photo, [CONTENT_LAYER])[CONTENT_LAYER]
            fs = self.net(cover_crop(self.painting, tuple(photo.shape[-2:])), [CONTENT_LAYER])[CONTENT_LAYER]
        return Prepared(id(self), photo, self.style_distance(photo), fp, float(torch.linalg.norm(fs - fp)),
                        sliced_wasserstein(lab(_pixels(photo)), self.painting_lab), border_ratio(photo))

    def score(self, output: torch.Tensor, photo: torch.Tensor | Prepared) -> Scores:
        """The measures of ``output`` (the stylized ``photo``, or its :meth:`prepare`)."""
        ref = photo if isinstance(photo, Prepared) else self.prepare(photo)
        if ref.judge != id(self):
            raise ValueError("score: this photo was prepared by another Judge (another painting or size)")
        output = cover_crop(output.float(), tuple(ref.photo.shape[-2:]))
        style_ratio = self.style_distance(output) / max(ref.style_distance, 1e-12)
        with torch.no_grad():
            fo = self.net(output, [CONTENT_LAYER])[CONTENT_LAYER]
        content_ratio = float(torch.linalg.norm(fo - ref.content) / max(ref.painting_content_distance, 1e-12))
        palette_ratio = (sliced_wasserstein(lab(_pixels(output)), self.painting_lab)
                         / max(ref.palette_distance, 1e-12))
        return Scores(style_ratio, content_ratio, palette_ratio, border_ratio(output), ref.border_ratio)


@dataclass(eq=False)
class Prepared:
    """A photo's own measures against one :class:`Judge`'s painting (:meth:`Judge.prepare`)."""

    judge: int  # id() of the Judge that made it: its painting and size are in these figures
    photo: torch.Tensor
    style_distance: float
    content: torch.Tensor
    painting_content_distance: float
    palette_distance: float
    border_ratio: float


def drift(reference: torch.Tensor, other: torch.Tensor, photo: torch.Tensor, size: int = 512,
          net: LossNetwork | None = None) -> dict[str, float]:
    """How much of a stylization ``other`` loses against ``reference`` (two outputs for one ``photo``, e.g. an
    int8 network's and its fp32 original's), with the measures above and no painting needed:

    * ``style_drift``: the Gram distance of ``other`` to ``reference`` over the photo's own (0: the same
      style statistics; 1: as far from them as the unstyled photo);
    * ``content_drift``: the relu4_2 distance of ``other`` to ``reference`` over the photo's;
    * ``psnr_db``: the pixel PSNR of ``other`` against ``reference`` (in [0, 1]).
    """
    judge = Judge(reference, size=size, net=net)
    ref = judge.painting
    o = cover_crop(resize_longest(other.float(), size), tuple(ref.shape[-2:]))
    p = cover_crop(resize_longest(photo.float(), size), tuple(ref.shape[-2:]))
    style = judge.style_distance(o) / max(judge.style_distance(p), 1e-12)
    with torch.no_grad():
        fr, fo, fp = (judge.net(t, [CONTENT_LAYER])[CONTENT_LAYER] for t in (ref, o, p))
    content = float(torch.linalg.norm(fo - fr) / torch.linalg.norm(fp - fr).clamp_min(1e-12))
    mse = float(((other.float().clamp(0, 1) - reference.float().clamp(0, 1)) ** 2).mean())
    return {"style_drift": style, "content_drift": content, "psnr_db": 10 * np.log10(1 / max(mse, 1e-12))}
