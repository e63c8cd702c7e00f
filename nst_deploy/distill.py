"""Distillation: a network first learns a trained model's outputs, then the style itself.

A small network (``nst train --width 0.25``) trained from random weights with the perceptual loss alone
stylizes weakly in the steps this machine affords; a trained model of the same style (the *teacher*)
gives it a target for every pixel instead. ``nst train --teacher MODEL --distill-steps N`` spends the
first ``N`` steps on

``L = 10 |y - t|_1 + sum_l |phi_l(y) - phi_l(t)|^2 / mean(phi_l(t)^2)``,  ``l`` in relu1_1, relu2_1, relu3_1,

where ``t`` is the teacher's output on the same crop (taken at ``--distill-size``) and ``phi_l`` the loss
network's features (each layer's distance relative to the teacher's own feature energy, so that every
layer counts alike), and the remaining steps on the perceptual loss of :mod:`nst_deploy.train` (a short
fine-tune on the painting that brings back what the copy blurred). The learning rate drops to
:data:`LR_DROP` times ``--lr`` for the last third of the distillation, and Adam starts afresh with the
style phase (the two losses' gradients differ in scale). docs/performance.md measures the recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import NSTError
from .fsutil import sha256_file
from .losses import LossTerms
from .models import model_path
from .nets.io import load_model

__all__ = ["FEATURE_LAYERS", "LR_DROP", "PIXEL_WEIGHT", "DistillLoss", "distill_lr"]

#: The weight of the pixel term (L1 on [0, 1] images) against the feature terms.
PIXEL_WEIGHT = 10.0
#: The loss network layers compared: the low ones hold the texture the copy must keep.
FEATURE_LAYERS = ("relu1_1", "relu2_1", "relu3_1")
#: The learning rate's factor for the last third of the distillation.
LR_DROP = 0.3


def distill_lr(step: int, distill_steps: int, lr: float) -> float:
    """The learning rate of step ``step`` (0-based): ``lr``, times :data:`LR_DROP` in the last third of
    the distillation; ``lr`` again in the style phase."""
    return lr * LR_DROP if 2 * distill_steps <= 3 * step < 3 * distill_steps else lr


class DistillLoss:
    """The distillation loss of a batch against a teacher model (see the module's docstring).

    Args:
        teacher: a Johnson model's name (a bundled one) or file.
        lossnet: the loss network (the trainer's).
        device: where the teacher runs.
    """

    def __init__(self, teacher: str | os.PathLike, lossnet: torch.nn.Module, device: torch.device):
        path = model_path(teacher)
        net, meta = load_model(path, device=device)
        if meta.get("arch") != "johnson":
            raise NSTError(f"--teacher '{teacher}' is a {meta.get('arch')} model: give a johnson one (one style)")
        if meta.get("output_scale", 1) != 1:
            raise NSTError(f"--teacher '{teacher}' changes the image size: give a model that keeps it")
        self.teacher = net.eval().requires_grad_(False)
        self.lossnet = lossnet
        self.meta = {"model": Path(path).name, "sha256": sha256_file(path), "style": meta.get("style")}

    def __call__(self, student: torch.nn.Module, photos: torch.Tensor, size: int,
                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, LossTerms]:
        """Mean loss of ``student`` on a batch of crops ``(B, 3, S, S)`` taken at ``size`` pixels;
        ``dtype``: the autocast type of the networks (None: fp32). The terms' ``content`` is the pixel
        term and ``style`` the feature term."""
        if photos.shape[-1] != size:
            photos = F.interpolate(photos, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
        kind = photos.device.type
        with torch.no_grad(), torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            target = self.teacher(photos).float()
            want = self.lossnet(target, list(FEATURE_LAYERS))
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = student(photos)
        y = y.float()
        # the loss network in bf16 at most (fp16 overflows on the caffe VGG19's activations; see train.py)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            have = self.lossnet(y, list(FEATURE_LAYERS))
        pixel = PIXEL_WEIGHT * F.l1_loss(y, target)
        feature = sum(F.mse_loss(have[n].float(), want[n].float()) / want[n].float().pow(2).mean().clamp_min(1e-12)
                      for n in FEATURE_LAYERS)
        total = pixel + feature
        return total, LossTerms(float(total.detach()), float(pixel.detach()), float(feature.detach()), 0.0)
