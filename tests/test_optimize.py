"""The pixel-optimization loop: loss goes down, NaN recovery, options."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from nst_deploy.errors import NSTError
from nst_deploy.losses import LossTerms
from nst_deploy.optimize import StylizeOptions, optimize_pixels, stylize

from .conftest import DATA


def _quadratic(target):
    def loss_fn(x):
        loss = (x - target).square().sum()
        v = float(loss.detach())
        return loss, LossTerms(v, v, 0.0, 0.0)
    return loss_fn


@pytest.mark.parametrize("optimizer,lr", [("lbfgs", 1.0), ("adam", 0.05), ("sgd", 0.1)])
def test_optimizers_reduce_a_quadratic(optimizer, lr):
    target = torch.rand(1, 3, 8, 8)
    out, log = optimize_pixels(_quadratic(target), torch.zeros_like(target), steps=30, optimizer=optimizer, lr=lr)
    assert len(log) == 30 and log[-1].total < 0.1 * log[0].total
    assert (out - target).abs().max() < 0.3


def test_nan_mid_run_restores_best_iterate_and_falls_back():
    target = torch.rand(1, 3, 8, 8)
    calls = {"n": 0}
    base = _quadratic(target)

    def poisoned(x):
        calls["n"] += 1
        loss, terms = base(x)
        if calls["n"] == 6:  # inject a NaN mid-run
            return loss * float("nan"), LossTerms(math.nan, math.nan, 0.0, 0.0)
        return loss, terms

    with pytest.warns(RuntimeWarning, match="non-finite loss.*continue with adam"):
        out, log = optimize_pixels(poisoned, torch.zeros_like(target), steps=20, optimizer="lbfgs")
    assert torch.isfinite(out).all()
    best_before = min(t.total for t in log[:4])
    assert base(out)[1].total <= best_before  # no worse than the best iterate before the NaN


def test_persistent_nan_is_an_error():
    def always_nan(x):
        return x.sum() * float("nan"), LossTerms(math.nan, math.nan, 0.0, 0.0)

    with pytest.raises(NSTError, match="NaN/Inf"), pytest.warns(RuntimeWarning):
        optimize_pixels(always_nan, torch.zeros(1, 3, 4, 4), steps=3, optimizer="adam")


def test_stylize_small_lowers_loss_and_keeps_size():
    log = []
    out = stylize(DATA / "chelsea.jpg", DATA / "starry_night.jpg", size=48, steps=8, optimizer="adam",
                  callback=lambda info: log.append(info.terms.total))
    assert isinstance(out, Image.Image) and out.size == (48, 32)  # a path in, a PIL image out
    assert log[-1] < log[0]


def test_options_validation():
    with pytest.raises(NSTError, match="unknown preset"):
        StylizeOptions(preset="picasso").resolved()
    with pytest.raises(NSTError, match="unknown optimizer"):
        StylizeOptions(optimizer="newton").resolved()
    o = StylizeOptions(preset="multiscale-content").resolved()
    assert o.optimizer == "adam" and set(o.content_layers) == {"conv3_2", "conv4_2"}


def test_lbfgs_runs_unguarded_at_paper_loss_scale(recwarn):
    """The Gatys loss is about 1e13 here; L-BFGS must not need the NaN guard."""
    log = []
    out = stylize(DATA / "chelsea.jpg", DATA / "starry_night.jpg", size=96, steps=10, optimizer="lbfgs",
                  callback=lambda info: log.append((info.optimizer, info.terms.total)), as_tensor=True)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert all(name == "lbfgs" for name, _ in log) and log[-1][1] < 0.5 * log[0][1]
    assert torch.isfinite(out).all()


def test_lbfgs_on_channels_last_pixels():
    """A 1x1 image can arrive channels-last; L-BFGS views the pixels flat and must still step."""
    from nst_deploy.optimize import PixelOptimizer

    x0 = torch.rand(1, 3, 4, 5).to(memory_format=torch.channels_last)
    target = torch.rand(1, 3, 4, 5)

    def loss(x):
        d = ((x - target) ** 2).sum()
        return d, LossTerms(total=float(d), content=0.0, style=float(d), tv=0.0)

    po = PixelOptimizer(loss, x0, optimizer="lbfgs")
    first = po.step().total
    for _ in range(4):
        last = po.step().total
    assert last < first


def test_empty_images_are_refused():
    import numpy as np

    style = torch.rand(1, 3, 32, 32)
    with pytest.raises(NSTError, match="content tensor is empty"):
        stylize(torch.rand(1, 3, 0, 64), style, steps=1, size=32)
    with pytest.raises(NSTError, match="content array is empty"):
        stylize(np.zeros((0, 5, 3), np.uint8), style, steps=1, size=32)
