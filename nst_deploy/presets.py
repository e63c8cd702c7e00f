"""Presets from the papers and the parsing of layer specifications.

A layer specification is a comma-separated list of ``name`` or ``name:weight``
(``"conv4_2"``, ``"conv1_1:0.5,conv2_1"``); names are checked against the loss network later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import NSTError

__all__ = ["GATYS_STYLE", "PRESETS", "Preset", "parse_layers"]

GATYS_STYLE = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


@dataclass(frozen=True)
class Preset:
    """A recipe from a paper: layers, weights, optimizer and initialization."""

    name: str
    description: str
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    content_weight: float = 1.0
    style_weight: float = 1e3
    optimizer: str = "lbfgs"
    init: str = "content"
    extra: dict[str, object] = field(default_factory=dict)


def _equal(names) -> dict[str, float]:
    return {n: 1.0 / len(names) for n in names}


PRESETS: dict[str, Preset] = {
    "gatys": Preset(
        "gatys",
        "Gatys et al. 2016: content conv4_2; style conv1_1..conv5_1 with equal weights; L-BFGS.",
        {"conv4_2": 1.0},
        _equal(GATYS_STYLE),
    ),
    "yu-chang": Preset(
        "yu-chang",
        "Reduced layers (conv1_2, conv3_3, conv5_3) as style; initialised from the content image; "
        "content:style weight ratio 1:10.",
        {"conv4_2": 1.0},
        _equal(("conv1_2", "conv3_3", "conv5_3")),
        content_weight=1.0,
        style_weight=10.0,
        init="content",
    ),
    "multiscale-content": Preset(
        "multiscale-content",
        "Content on conv3_2 and conv4_2, style conv1_1..conv5_1; Adam.",
        {"conv3_2": 0.5, "conv4_2": 0.5},
        _equal(GATYS_STYLE),
        optimizer="adam",
    ),
    "partial": Preset(
        "partial",
        "Partial style transfer: content {conv1_1, conv2_1, conv4_1, conv4_2}, style {conv3_1, conv5_1}; "
        "beta 10, so the low content layers keep the content's colours and the style gives its textures.",
        _equal(("conv1_1", "conv2_1", "conv4_1", "conv4_2")),
        _equal(("conv3_1", "conv5_1")),
        style_weight=10.0,
    ),
}


def parse_layers(spec: str | dict[str, float] | list[str], what: str = "layers",
                 allow_empty: bool = False) -> dict[str, float]:
    """``"a,b:0.5"`` (or a list of such items, or a dict) to ``{"a": 1.0, "b": 0.5}``.

    ``allow_empty``: an empty specification (``""``) gives ``{}`` (e.g. no content layers, for
    texture synthesis) instead of an error.
    """
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        items = []
        for part in parts:
            if not isinstance(part, str):
                raise NSTError(f"invalid {what} {spec!r}: a list of layer names ('conv1_1' or 'conv1_1:0.5') "
                               f"was expected, not {part!r}")
            part = part.strip()
            if not part:
                continue
            name, sep, weight = part.partition(":")
            items.append((name.strip(), weight.strip() if sep else 1.0))
    out: dict[str, float] = {}
    for name, weight in items:
        if not name:
            raise NSTError(f"invalid {what} '{spec}': empty layer name")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise NSTError(f"invalid {what} '{spec}': weight of {name} is not a number ({weight!r})") from None
        if not math.isfinite(w):
            raise NSTError(f"invalid {what} '{spec}': weight of {name} must be a finite number, not {weight}")
        if w < 0:
            raise NSTError(f"invalid {what} '{spec}': weight of {name} must be >= 0")
        out[name] = w
    if not out and not allow_empty:
        raise NSTError(f"invalid {what} '{spec}': no layers given")
    return out
