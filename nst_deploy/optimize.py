"""The per-image optimization loop (Gatys et al.): optimize the output's pixels.

``stylize(content, style, **options)`` loads the loss network, computes the targets once, and runs
L-BFGS (default), Adam or plain gradient descent on the pixels (RGB in ``[0, 1]``). A guard watches
every loss for NaN/Inf: it restores the best iterate so far, switches L-BFGS to Adam (a safer
optimizer once the curvature history is poisoned) and warns, so the result is never NaN or black.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .errors import NSTError
from .images import load_image, resize
from .losses import LossTerms, PerceptualLoss
from .lossnets import load_lossnet
from .recipes import PRESETS, parse_layers

__all__ = ["INITS", "OPTIMIZERS", "StepInfo", "StylizeOptions", "optimize_pixels", "stylize"]

OPTIMIZERS = ("lbfgs", "adam", "sgd")
INITS = ("content", "noise", "style", "white")
_DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02, "sgd": 1e-4}


@dataclass
class StylizeOptions:
    """Every option of a per-image stylization (the CLI flags and the API keywords)."""

    preset: str | None = "gatys"
    size: int = 256
    steps: int = 200
    optimizer: str | None = None
    lr: float | None = None
    init: str | None = None
    content_layers: dict[str, float] | str | None = None
    style_layers: dict[str, float] | str | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float = 0.0
    net: str = "vgg19"
    weights: str | None = None
    pooling: str = "max"
    device: str = "auto"
    seed: int = 0
    lbfgs_history: int = 100
    line_search: str | None = None
    deterministic: bool = False
    extra: dict = field(default_factory=dict)

    def resolved(self) -> StylizeOptions:
        """A copy with the preset's values filled in where an option was not given."""
        preset = PRESETS.get(self.preset) if self.preset else None
        if self.preset and preset is None:
            raise NSTError(f"unknown preset '{self.preset}': choose from {', '.join(PRESETS)}")
        out = StylizeOptions(**{f.name: getattr(self, f.name) for f in fields(self)})
        base = preset or PRESETS["gatys"]
        out.content_layers = parse_layers(out.content_layers if out.content_layers is not None
                                          else base.content_layers, "content layers")
        out.style_layers = parse_layers(out.style_layers if out.style_layers is not None
                                        else base.style_layers, "style layers")
        for name in ("content_weight", "style_weight", "optimizer", "init"):
            if getattr(out, name) is None:
                setattr(out, name, getattr(base, name))
        if out.optimizer not in OPTIMIZERS:
            raise NSTError(f"unknown optimizer '{out.optimizer}': choose from {', '.join(OPTIMIZERS)}")
        if out.lr is None:
            out.lr = _DEFAULT_LR[out.optimizer]
        if out.steps < 1:
            raise NSTError(f"steps must be at least 1, not {out.steps}")
        if out.line_search not in (None, "strong_wolfe"):
            raise NSTError(f"unknown line search '{out.line_search}': use strong_wolfe or none")
        return out


@dataclass
class StepInfo:
    """What a progress callback receives after each step."""

    step: int
    steps: int
    terms: LossTerms
    optimizer: str
    image: torch.Tensor


class _NonFinite(Exception):
    pass


def _make_optimizer(name: str, x: torch.Tensor, lr: float, history: int, line_search: str | None):
    if name == "lbfgs":
        # One iteration per step; the loop decides when to stop, so the tolerances are off.
        return torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=history, line_search_fn=line_search,
                                 tolerance_grad=0.0, tolerance_change=0.0)
    if name == "adam":
        return torch.optim.Adam([x], lr=lr)
    return torch.optim.SGD([x], lr=lr)


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

    L-BFGS minimizes the loss divided by its first value (well conditioned whatever the loss scale).
    On a NaN/Inf loss or gradient the best iterate is restored; L-BFGS falls back to Adam (plain
    gradient descent and Adam continue with a halved learning rate) and a warning is issued. The
    returned image is always finite.
    """
    lr = _DEFAULT_LR[optimizer] if lr is None else lr
    x = x0.detach().clone().requires_grad_(True)
    opt = _make_optimizer(optimizer, x, lr, lbfgs_history, line_search)
    best_loss, best_x = math.inf, x.detach().clone()
    log: list[LossTerms] = []
    failures = 0
    step = 0
    seen: list[LossTerms] = []  # the evaluations of the current step (L-BFGS may make several)
    # L-BFGS sees the loss divided by its first value: the same minimizer, but without this its
    # first steps overflow to inf at the paper's loss scale (about 1e13 for a 256 px image).
    scale: list[float] = []

    def closure():
        nonlocal best_loss, best_x
        x.grad = None
        loss, terms = loss_fn(x)
        if not math.isfinite(terms.total):
            raise _NonFinite
        if not scale:
            scale.append(max(abs(terms.total), 1e-12))
        if optimizer == "lbfgs":
            loss = loss / scale[0]
        loss.backward()
        if not torch.isfinite(x.grad).all():
            raise _NonFinite
        if terms.total < best_loss:
            best_loss, best_x = terms.total, x.detach().clone()
        seen.append(terms)
        return loss

    while step < steps:
        seen.clear()
        try:
            opt.step(closure)
            if not torch.isfinite(x).all():
                raise _NonFinite
        except _NonFinite:
            failures += 1
            if failures > 5:
                raise NSTError("the loss stayed NaN/Inf after 5 recoveries; check the weights and inputs") from None
            with torch.no_grad():
                x.copy_(best_x)
            if optimizer == "lbfgs":
                optimizer, lr = "adam", _DEFAULT_LR["adam"]
            else:
                lr = lr / 2
            warnings.warn(
                f"non-finite loss at step {step + 1}: restored the best iterate (loss {best_loss:.4g}) "
                f"and continue with {optimizer} (lr {lr:g})",
                RuntimeWarning,
                stacklevel=2,
            )
            opt = _make_optimizer(optimizer, x, lr, lbfgs_history, line_search)
            continue
        step += 1
        log.append(seen[0])
        if callback is not None:
            callback(StepInfo(step, steps, seen[0], optimizer, x.detach()))
    with torch.no_grad():  # the last iterate has not been evaluated yet: score it
        _, terms = loss_fn(x)
    if math.isfinite(terms.total) and terms.total <= best_loss and torch.isfinite(x).all():
        best_x = x.detach().clone()
    return best_x.clamp(0.0, 1.0), log


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NSTError(f"unknown device '{name}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NSTError(f"device '{name}' was asked for, but CUDA is not available")
    return dev


def _initial(init: str, content: torch.Tensor, style: torch.Tensor, seed: int, min_side: int) -> torch.Tensor:
    hw = tuple(content.shape[-2:])
    if init == "content":
        return content.clone()
    if init == "noise":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(content.shape, generator=g).to(content)
    if init == "style":
        return resize(style.cpu(), hw).to(content)
    if init == "white":
        return torch.ones_like(content)
    path = Path(init)
    if not path.exists():
        raise NSTError(f"unknown init '{init}': use content, noise, style, white or an image path")
    img = load_image(path, min_side=min_side)
    return resize(img, hw).to(content)


def stylize(
    content: str | Path | torch.Tensor,
    style: str | Path | torch.Tensor,
    options: StylizeOptions | None = None,
    *,
    callback: Callable[[StepInfo], None] | None = None,
    **kw,
) -> torch.Tensor:
    """Stylize ``content`` with ``style`` by optimizing the pixels (Gatys et al.).

    Args:
        content, style: image paths or RGB tensors ``(1, 3, H, W)`` in ``[0, 1]``.
        options: a :class:`StylizeOptions`; keyword arguments override its fields.
        callback: called after every step with a :class:`StepInfo`.

    Returns:
        The stylized image ``(1, 3, H, W)`` in ``[0, 1]`` on the CPU, ``H, W`` the content's size
        (longest side ``options.size``).
    """
    options = options or StylizeOptions()
    unknown = set(kw) - {f.name for f in fields(StylizeOptions)}
    if unknown:
        raise TypeError(f"unknown stylize options: {', '.join(sorted(unknown))}")
    for k, v in kw.items():
        setattr(options, k, v)
    o = options.resolved()
    device = _device(o.device)
    if o.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(o.seed)
    net = load_lossnet(o.net, o.weights, pooling=o.pooling, device=device)
    loss = PerceptualLoss(net, o.content_layers, o.style_layers, o.content_weight, o.style_weight, o.tv_weight)
    min_side = net.min_input_size(loss.layers) if loss.layers else 1
    c = content if isinstance(content, torch.Tensor) else load_image(content, size=o.size, min_side=min_side)
    s = style if isinstance(style, torch.Tensor) else load_image(style, size=o.size, min_side=min_side)
    c, s = c.to(device), s.to(device)
    loss.set_content(c)
    loss.set_style(s)
    x0 = _initial(o.init, c, s, o.seed, min_side)
    out, _ = optimize_pixels(
        loss, x0, steps=o.steps, optimizer=o.optimizer, lr=o.lr, lbfgs_history=o.lbfgs_history,
        line_search=o.line_search, callback=callback,
    )
    return out.cpu()
