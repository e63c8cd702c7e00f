"""The training photographs: scanning a folder, and the crops each step sees.

Data order and augmentation are a pure function of ``(seed, sample number)``: a resumed run sees
the same images as an uninterrupted one, and with ``torchrun`` each of the ``W`` processes takes its
``batch / W`` share of the same global batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ImageOps

from .errors import ImageError, NSTError
from .images import from_pil, open_allowed, pixel_limit

__all__ = ["IMAGE_SUFFIXES", "PhotoDataset", "scan_photos", "step_batches"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def scan_photos(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted) whose header reads; others warned of."""
    if not folder.is_dir():
        raise NSTError(f"--data '{folder}' is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    good = []
    for p in found:
        try:
            with open_allowed(p) as img:
                w, h = img.size
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped
            warnings.warn(f"skipping '{p}': not a readable image ({type(e).__name__})", stacklevel=2)
            continue
        if min(w, h) < 16:
            warnings.warn(f"skipping '{p}': {w}x{h} is too small", stacklevel=2)
            continue
        if w * h > pixel_limit():
            warnings.warn(f"skipping '{p}': {w}x{h} is over the pixel limit", stacklevel=2)
            continue
        good.append(p)
    if not good:
        raise NSTError(f"--data '{folder}' holds no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return good


class PhotoDataset(torch.utils.data.Dataset):
    """Augmented crops, indexed by global sample number ``n`` (a pure function of ``seed`` and ``n``).

    Sample ``n`` is file ``perm_e[n mod F]`` of epoch ``e = n // F`` (a fresh permutation per epoch);
    its crop is a square of side ``u * min(H, W)`` with ``u`` uniform in ``[min_crop, 1]`` at a random
    position, flipped with probability 1/2, resized (antialiased) to ``out`` pixels.
    """

    def __init__(self, files: list[Path], out: int, seed: int, min_crop: float, first: int = 0, count: int = 0,
                 stride: int = 1):
        self.files = list(files)
        self.out = out
        self.seed = seed
        self.min_crop = min_crop
        self.first, self.count, self.stride = first, count, stride
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.count

    def file_of(self, n: int) -> Path:
        epoch, pos = divmod(n, len(self.files))
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, 7919, epoch]).permutation(len(self.files))}
        return self.files[int(self._perm[epoch][pos])]

    def sample(self, n: int) -> torch.Tensor:
        """The ``(3, out, out)`` crop of global sample ``n``."""
        rng = np.random.default_rng([self.seed, n])
        u, fx, fy, flip = rng.uniform(self.min_crop, 1.0), rng.random(), rng.random(), rng.random() < 0.5
        path = self.file_of(n)
        for attempt in range(len(self.files)):
            try:
                return self._crop(path, u, fx, fy, flip)
            except ImageError as e:
                if attempt == 0:
                    warnings.warn(f"skipping '{path}': {e}", stacklevel=2)
                path = self.files[(self.files.index(path) + 1) % len(self.files)]
        raise NSTError("no image in --data can be decoded")

    def _crop(self, path: Path, u: float, fx: float, fy: float, flip: bool) -> torch.Tensor:
        try:
            img = open_allowed(path)
            w, h = img.size
            side = u * min(w, h)
            if img.format == "JPEG":  # decode at a reduced scale when the crop allows it (fast)
                k = max(1.0, side / (2 * self.out))
                img.draft("RGB", (max(1, int(w / k)), max(1, int(h / k))))
            img = ImageOps.exif_transpose(img)
            x = from_pil(img)
        except Exception as e:  # noqa: BLE001
            raise ImageError(f"cannot decode ({type(e).__name__})") from None
        h2, w2 = x.shape[-2:]
        s = max(1, min(h2, w2, round(u * min(h2, w2))))
        top, left = int(fy * (h2 - s)), int(fx * (w2 - s))
        x = x[..., top:top + s, left:left + s]
        if flip:
            x = x.flip(-1)
        x = F.interpolate(x, size=(self.out, self.out), mode="bicubic", align_corners=False, antialias=True)
        return x.clamp_(0, 1)[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.sample(self.first + i * self.stride)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``i``: the local batch of step ``start + i`` (module level, so that workers can pickle it)."""

    def __init__(self, ds: PhotoDataset, start: int, batch: int, local: int, rank: int):
        self.ds, self.start, self.batch, self.local, self.rank = ds, start, batch, local, rank

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, i: int) -> torch.Tensor:
        base = (self.start + i) * self.batch + self.rank * self.local
        return torch.stack([self.ds.sample(base + j) for j in range(self.local)])


def step_batches(ds: PhotoDataset, start: int, batch: int, local: int, rank: int, workers: int):
    """Yield the local batch of every step from ``start`` on (``workers`` processes decode ahead)."""
    fresh = PhotoDataset(ds.files, ds.out, ds.seed, ds.min_crop)
    loader = torch.utils.data.DataLoader(_StepBatches(fresh, start, batch, local, rank), batch_size=None,
                                         shuffle=False, num_workers=workers, persistent_workers=workers > 0,
                                         prefetch_factor=2 if workers > 0 else None)
    yield from loader


