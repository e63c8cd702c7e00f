"""The pixel optimizer behind the per-image optimization and style generation.

:class:`PixelOptimizer` steps L-BFGS (default), Adam or plain gradient descent on an image, one step
at a time. A guard watches every loss and gradient for NaN/Inf: it restores the best iterate so far,
switches L-BFGS to Adam (a safer optimizer once the curvature history is poisoned; Adam and gradient
descent halve their learning rate) and warns, so the result is never NaN or black.
:func:`optimize_pixels` runs it for a number of steps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import NSTError
from .losses import LossTerms
from .options import DEFAULT_LR, OPTIMIZERS

__all__ = ["PixelOptimizer", "StepInfo", "optimize_pixels"]


@dataclass
class StepInfo:
    """What a progress callback receives after each step."""

    step: int
    steps: int
    terms: LossTerms
    optimizer: str
    image: torch.Tensor
    scale: int = 0
    scales: int = 1
    seconds: float = 0.0
    #: deformable transfer: ``points`` and ``targets`` (the keypoint pairs) and the current ``theta``
    deform: dict | None = None


class _NonFinite(Exception):
    pass


def _make_optimizer(name: str, x: torch.Tensor, lr: float, history: int, line_search: str | None):
    if name == "lbfgs":
        # One iteration per step; the loop decides when to stop, so the tolerances are off. The line
        # search needs its own evaluation budget (torch's default, 1.25 x max_iter, is 1 here).
        return torch.optim.LBFGS([x], lr=lr, max_iter=1, max_eval=25 if line_search else 1, history_size=history,
                                 line_search_fn=line_search, tolerance_grad=0.0, tolerance_change=0.0)
    if name == "adam":
        return torch.optim.Adam([x], lr=lr)
    if name == "sgd":
        return torch.optim.SGD([x], lr=lr)
    raise NSTError(f"unknown optimizer '{name}': choose from {', '.join(OPTIMIZERS)}")


class PixelOptimizer:
    """Minimizes ``loss_fn`` over the pixels from ``x0``, one step at a time, with the NaN guard.

    L-BFGS minimizes the loss divided by its first value (the same minimizer, well conditioned
    whatever the loss scale: at the paper's scale, about 1e13 for 256 px, its first steps would
    otherwise overflow). Every optimizer takes projected steps: the pixels are clamped to
    ``[0, 1]`` after each step (the saved, clamped image then ends at a lower loss than when
    clamping only at the end).
    """

    #: A step starting at a loss this many times the best so far counts as L-BFGS diverging.
    DIVERGED = 4.0

    def __init__(self, loss_fn, x0: torch.Tensor, *, optimizer: str = "lbfgs", lr: float | None = None,
                 lbfgs_history: int = 100, line_search: str | None = None, project=None,
                 diverged: float = DIVERGED):
        self.loss_fn = loss_fn
        self.diverged = diverged
        # the projection after each step: by default the pixels are clamped to [0, 1]; a joint
        # variable (pixels and warp parameters, see deform) brings its own
        self.project = project or (lambda x: x.clamp_(0.0, 1.0))
        self.optimizer = optimizer
        self.lr = DEFAULT_LR[optimizer] if lr is None else lr
        self.history = lbfgs_history
        self.line_search = line_search
        # contiguous: L-BFGS views the pixels flat (a 1x1 image can arrive channels-last)
        self.x = x0.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        self.opt = _make_optimizer(optimizer, self.x, self.lr, lbfgs_history, line_search)
        self.best_loss = math.inf
        self.best_x = self.x.detach().clone()
        self.loss_scale: float | None = None
        self.failures = 0
        self.resets = 0
        self.step_count = 0
        self._seen: list[LossTerms] = []

    def _closure(self):
        x = self.x
        x.grad = None
        loss, terms = self.loss_fn(x)
        if not math.isfinite(terms.total):
            raise _NonFinite
        if self.loss_scale is None:
            self.loss_scale = max(abs(terms.total), 1e-12)
        if self.optimizer == "lbfgs":
            loss = loss / self.loss_scale
        loss.backward()
        if not torch.isfinite(x.grad).all():
            raise _NonFinite
        if terms.total < self.best_loss:
            self.best_loss, self.best_x = terms.total, x.detach().clone()
        self._seen.append(terms)
        return loss

    def step(self) -> LossTerms:
        """One optimizer step; returns the loss terms at the step's start.

        After a NaN/Inf the best iterate is restored and the step retried (see :meth:`_recover`).
        Without a line search, L-BFGS now and then takes a step far too long (the loss jumps by
        orders of magnitude): when a step starts at a loss over ``DIVERGED`` times the best, the best
        iterate is restored and the curvature history dropped, and the step is retried.
        """
        while True:
            self._seen.clear()
            best_before = self.best_loss
            try:
                self.opt.step(self._closure)
                if not torch.isfinite(self.x).all():
                    raise _NonFinite
            except _NonFinite:
                self._recover()
                continue
            if self.optimizer == "lbfgs" and self._seen[0].total > self.diverged * best_before:
                self.resets += 1
                if self.resets > 20:
                    self.resets = 0
                    self._recover(f"L-BFGS diverged {20} times")
                    continue
                with torch.no_grad():
                    self.x.copy_(self.best_x)
                self.opt = _make_optimizer(self.optimizer, self.x, self.lr, self.history, self.line_search)
                continue
            with torch.no_grad():  # projected steps: the pixels stay in [0, 1]
                self.project(self.x)
            self.step_count += 1
            return self._seen[0]

    def _recover(self, reason: str = "non-finite loss") -> None:
        self.failures += 1
        if self.failures > 5:
            raise NSTError("the loss stayed NaN/Inf after 5 recoveries; check the weights and inputs")
        with torch.no_grad():
            self.x.copy_(self.best_x)
        if self.optimizer == "lbfgs":
            self.optimizer, self.lr = "adam", DEFAULT_LR["adam"]
        else:
            self.lr = self.lr / 2
        best = "none yet" if math.isinf(self.best_loss) else f"{self.best_loss:.4g}"
        warnings.warn(
            f"{reason} at step {self.step_count + 1}: restored the best iterate (loss {best}) "
            f"and continue with {self.optimizer} (lr {self.lr:g})",
            RuntimeWarning,
            stacklevel=3,
        )
        self.opt = _make_optimizer(self.optimizer, self.x, self.lr, self.history, self.line_search)

    def result(self) -> torch.Tensor:
        """The best iterate, projected (clamped to ``[0, 1]``; the last one is scored first)."""
        with torch.no_grad():
            _, terms = self.loss_fn(self.x)
        if math.isfinite(terms.total) and terms.total <= self.best_loss and torch.isfinite(self.x).all():
            self.best_loss, self.best_x = terms.total, self.x.detach().clone()
        with torch.no_grad():
            return self.project(self.best_x.clone())

    def state_dict(self) -> dict:
        return {
            "x": self.x.detach().cpu().clone(),
            "best_x": self.best_x.cpu().clone(),
            "best_loss": self.best_loss,
            "loss_scale": self.loss_scale,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "failures": self.failures,
            "resets": self.resets,
            "step": self.step_count,
            "opt_state": _map_tensors(self.opt.state_dict(), lambda t: t.detach().cpu().clone()),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.x.copy_(state["x"].to(self.x))
        self.best_x = state["best_x"].to(self.x)
        self.best_loss = float(state["best_loss"])
        self.loss_scale = state["loss_scale"]
        self.optimizer, self.lr = state["optimizer"], float(state["lr"])
        self.failures, self.step_count = int(state["failures"]), int(state["step"])
        self.resets = int(state.get("resets", 0))
        self.opt = _make_optimizer(self.optimizer, self.x, self.lr, self.history, self.line_search)
        self.opt.load_state_dict(_map_tensors(state["opt_state"], lambda t: t.to(self.x.device)))


def _map_tensors(obj, fn):
    """``obj`` (nested dicts, lists, tuples) with ``fn`` applied to every tensor in it."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def optimize_pixels(
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, LossTerms]],
    x0: torch.Tensor,
    *,
    steps: int,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    lbfgs_history: int = 100,
    line_search: str | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> tuple[torch.Tensor, list[LossTerms]]:
    """Minimize ``loss_fn`` over the pixels, starting from ``x0``; returns the best iterate and the log.

    See :class:`PixelOptimizer` for the NaN guard. The returned image is always finite.
    """
    po = PixelOptimizer(loss_fn, x0, optimizer=optimizer, lr=lr, lbfgs_history=lbfgs_history,
                        line_search=line_search)
    log: list[LossTerms] = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        terms = po.step()
        log.append(terms)
        if callback is not None:
            callback(StepInfo(step, steps, terms, po.optimizer, po.x.detach(), seconds=time.perf_counter() - t0))
    return po.result(), log
