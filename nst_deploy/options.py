"""The options of a per-image stylization: one type behind the CLI flags, the API keywords and recipes.

``StylizeOptions.resolved()`` fills in the preset's values and checks every option, naming it in
the error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import NSTError
from .lossnets import LOSSNETS
from .presets import PRESETS, parse_layers
from .styles import MULTI_STYLE, STYLE_REPS

__all__ = ["INITS", "MAX_SIZE", "OPTIMIZERS", "RUN_CONTROL", "StylizeOptions"]

OPTIMIZERS = ("lbfgs", "adam", "sgd")
INITS = ("content", "noise", "style", "white")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02, "sgd": 1e-4}
#: Longest side accepted (a 16384 px image is about 2 GB in fp32 before any work).
MAX_SIZE = 16384
#: Options that only steer the run (where files go, how often): a checkpoint may be resumed with
#: other values of these, and with more or fewer steps.
RUN_CONTROL = ("steps", "device", "save_every", "workspace", "log_json", "checkpoint", "checkpoint_every",
               "resume", "deterministic", "deform_debug")


@dataclass
class StylizeOptions:
    """Every option of a per-image stylization: the CLI flags, the API keywords, the recipe keys.

    ``None`` means "the preset's value". See ``nst stylize --help`` for each option.
    """

    preset: str | None = "gatys"
    size: int = 256
    steps: int | list[int] = 200
    scales: int | list[int] | None = None
    optimizer: str | None = None
    lr: float | None = None
    init: str | None = None
    content_layers: dict[str, float] | str | None = None
    style_layers: dict[str, float] | str | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float = 0.0
    style_scale: float = 1.0
    preserve_color: bool = False
    style_rep: str = "gram"
    window: int = 0
    multi_style: str = "hierarchical"
    net: str = "vgg19"
    weights: str | None = None
    pooling: str = "max"
    device: str = "auto"
    seed: int = 0
    lbfgs_history: int = 100
    line_search: str | None = None
    deterministic: bool = False
    save_every: int = 0
    workspace: str | None = None
    log_json: str | None = None
    checkpoint: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    deform: bool = False
    keypoints: str | None = None
    k: int = 80
    warp_weight: float = 5.0
    flow_tv: float = 0.1
    deform_debug: str | None = None
    # filled in by resolved()
    scale_sizes: list[int] = field(default_factory=list, repr=False)
    scale_steps: list[int] = field(default_factory=list, repr=False)

    def update(self, **kw) -> StylizeOptions:
        """Set fields by name (``-`` or ``_``); an unknown name is an :class:`NSTError`."""
        names = {f.name for f in fields(self)} - {"scale_sizes", "scale_steps"}
        for key, value in kw.items():
            name = key.replace("-", "_")
            if name not in names:
                raise NSTError(f"unknown option '{key}'")
            setattr(self, name, value)
        return self

    def resolved(self) -> StylizeOptions:
        """A checked copy with the preset's values filled in where an option was not given."""
        out = replace(self)
        check_types(out)
        preset = PRESETS.get(out.preset) if out.preset else None
        if out.preset and preset is None:
            raise NSTError(f"unknown preset '{out.preset}': choose from {', '.join(PRESETS)}")
        base = preset or PRESETS["gatys"]
        out.content_layers = parse_layers(out.content_layers if out.content_layers is not None
                                          else base.content_layers, "content layers", allow_empty=True)
        out.style_layers = parse_layers(out.style_layers if out.style_layers is not None
                                        else base.style_layers, "style layers", allow_empty=True)
        for name in ("content_weight", "style_weight", "optimizer", "init"):
            if getattr(out, name) is None:
                setattr(out, name, getattr(base, name))
        if out.optimizer not in OPTIMIZERS:
            raise NSTError(f"unknown optimizer '{out.optimizer}': choose from {', '.join(OPTIMIZERS)}")
        if out.lr is None:
            out.lr = DEFAULT_LR[out.optimizer]
        if not out.lr > 0:
            raise NSTError(f"lr must be positive, not {out.lr}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(out, name)
            if not (v >= 0 and math.isfinite(v)):
                raise NSTError(f"{name.replace('_', '-')} must be a finite number >= 0, not {v}")
        if not (out.style_scale > 0 and math.isfinite(out.style_scale)):
            raise NSTError(f"style-scale must be positive, not {out.style_scale}")
        if out.style_rep not in STYLE_REPS:
            raise NSTError(f"unknown style representation '{out.style_rep}': choose from {', '.join(STYLE_REPS)}")
        if out.multi_style not in MULTI_STYLE:
            raise NSTError(f"unknown multi-style mode '{out.multi_style}': choose from {', '.join(MULTI_STYLE)}")
        if not 0 <= out.window <= 8:
            raise NSTError(f"window must be between 0 (pixel-wise) and 8, not {out.window}")
        if out.window and out.style_rep != "local":
            raise NSTError("window is the localized Gram's window: it needs style-rep local")
        if out.style_rep != "gram" and out.style_scale != 1:
            raise NSTError(f"style-scale must be 1 with style-rep {out.style_rep}: that representation compares the "
                           "style with the output at the same size")
        if out.line_search not in (None, "strong_wolfe"):
            raise NSTError(f"unknown line search '{out.line_search}': use strong_wolfe or none")
        if out.net.lower() not in LOSSNETS:
            raise NSTError(f"unknown loss network '{out.net}': choose from {', '.join(LOSSNETS)}")
        if out.pooling not in ("max", "avg"):
            raise NSTError(f"unknown pooling '{out.pooling}': use max or avg")
        for name in ("save_every", "checkpoint_every", "lbfgs_history"):
            if getattr(out, name) < (1 if name == "lbfgs_history" else 0):
                raise NSTError(f"{name.replace('_', '-')} must be a positive number, not {getattr(out, name)}")
        if not 0 <= out.seed < 2**63:
            raise NSTError(f"seed must be between 0 and 2^63 - 1, not {out.seed}")
        if out.save_every and not out.workspace:
            raise NSTError("save-every needs a workspace folder (workspace)")
        if out.resume and not out.checkpoint:
            raise NSTError("resume needs a checkpoint file (checkpoint)")
        if out.deform:
            if not 3 <= out.k <= 1000:
                raise NSTError(f"k (keypoint pairs) must be between 3 and 1000, not {out.k}")
            for name in ("warp_weight", "flow_tv"):
                if getattr(out, name) < 0:
                    raise NSTError(f"{name.replace('_', '-')} must be >= 0, not {getattr(out, name)}")
        elif out.keypoints or out.deform_debug:
            raise NSTError("keypoints and deform-debug belong to deformable transfer: add deform")
        out.scale_sizes = _scale_sizes(out.size, out.scales)
        out.size = out.scale_sizes[-1]
        out.scale_steps = _scale_steps(out.steps, len(out.scale_sizes))
        return out

    def settings(self) -> dict:
        """The resolved options that determine the result (what a checkpoint must agree on)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in RUN_CONTROL + ("scale_steps", "scales", "size"):
            d.pop(name, None)
        return json.loads(json.dumps(d))


_TYPES: dict[str, tuple] = {
    "preset": (str, type(None)), "size": (int,), "optimizer": (str, type(None)), "lr": (float, int, type(None)),
    "init": (str, type(None)), "content_weight": (float, int, type(None)), "style_weight": (float, int, type(None)),
    "tv_weight": (float, int), "style_scale": (float, int), "preserve_color": (bool,), "net": (str,),
    "weights": (str, type(None)), "pooling": (str,), "device": (str,), "seed": (int,), "lbfgs_history": (int,),
    "line_search": (str, type(None)), "deterministic": (bool,), "save_every": (int,),
    "workspace": (str, Path, type(None)), "log_json": (str, Path, type(None)),
    "checkpoint": (str, Path, type(None)), "checkpoint_every": (int,), "resume": (bool,),
    "content_layers": (str, dict, list, type(None)), "style_layers": (str, dict, list, type(None)),
    "steps": (int, list), "scales": (int, list, type(None)), "style_rep": (str,), "window": (int,),
    "multi_style": (str,), "deform": (bool,), "keypoints": (str, Path, type(None)), "k": (int,),
    "warp_weight": (float, int), "flow_tv": (float, int), "deform_debug": (str, Path, type(None)),
}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table",
               list: "a list", type(None): "unset", Path: "a path"}


def check_types(o: StylizeOptions) -> None:
    for name, allowed in _TYPES.items():
        v = getattr(o, name)
        ok = isinstance(v, allowed) and not (isinstance(v, bool) and bool not in allowed)
        if not ok:
            want = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in allowed if t is not Path))
            shown = repr(v) if isinstance(v, (int, float, str, list, dict)) else f"a {type(v).__name__}"
            raise NSTError(f"option '{name}' must be {want}, not {shown[:80]}")
        if isinstance(v, float) and float in allowed and not math.isfinite(v):
            raise NSTError(f"option '{name}' must be finite, not {v!r}")


def _scale_sizes(size: int, scales) -> list[int]:
    if not 16 <= size <= MAX_SIZE:
        raise NSTError(f"size must be between 16 and {MAX_SIZE} pixels, not {size}")
    if scales is None or scales == 1:
        return [size]
    if isinstance(scales, int):
        if not 1 <= scales <= 8:
            raise NSTError(f"scales must be between 1 and 8 (or a list of sizes), not {scales}")
        return [max(16, round(size / 2 ** (scales - 1 - i))) for i in range(scales)]
    sizes = list(scales)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and 16 <= s <= MAX_SIZE for s in sizes):
        raise NSTError(f"scales must be sizes between 16 and {MAX_SIZE} pixels, not {scales}")
    if sizes != sorted(sizes):
        raise NSTError(f"scales must go from coarse to fine (increasing), not {scales}")
    return sizes


def _scale_steps(steps, n: int) -> list[int]:
    if isinstance(steps, int):
        steps = [steps] * n
    steps = list(steps)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise NSTError(f"steps must be whole numbers, not {steps}")
    if not all(s >= 1 for s in steps):
        raise NSTError(f"steps must be at least 1, not {steps}")
    if len(steps) != n:
        raise NSTError(f"steps gives {len(steps)} values for {n} scales: give one, or one per scale")
    return steps
