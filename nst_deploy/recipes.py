"""Recipes: every option of a stylization in a TOML file (``nst stylize --recipe``).

The presets and layer specifications they use live in :mod:`nst_deploy.presets` (re-exported here).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import NSTError
from .options import StylizeOptions, check_types
from .presets import GATYS_STYLE, PRESETS, Preset, parse_layers

__all__ = ["GATYS_STYLE", "PRESETS", "Preset", "parse_layers", "read_recipe"]

#: Keys of a recipe besides the options: the images and the output.
RECIPE_FILES = ("content", "style", "styles", "output")
#: Keys of one ``[[styles]]`` table, and whether each is a path.
STYLE_KEYS = {"image": True, "weight": False, "layers": False, "mask": True, "style_mask": True}
_PATH_KEYS = ("content", "style", "output", "workspace", "log_json", "checkpoint", "init", "weights", "keypoints",
              "deform_debug")
_NOT_PATHS = {"content", "noise", "style", "white", "bundled", "torchvision", "random"}


def read_recipe(path: str | Path) -> dict:
    """Read a TOML recipe: the options of ``nst stylize`` plus ``content``, the styles and ``output``.

    Keys are the option names (``style_weight`` or ``style-weight``); an optional ``[stylize]``
    table may hold them instead of the top level. Styles: ``style = "a.jpg"`` (or a list of
    images), or one ``[[styles]]`` table per style with ``image``, ``weight``, ``layers``, ``mask``
    and ``style_mask``. Relative paths (images, masks, output, workspace, log, checkpoint, an init
    image, a weights file) are relative to the recipe's folder. Unknown keys and wrong types are
    errors that name the key.

    Returns:
        ``{name: value}`` with ``-`` in names turned into ``_``; ``styles`` a list of dicts.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NSTError(f"recipe '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NSTError(f"cannot read recipe '{path}': {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise NSTError(f"recipe '{path}' is not valid TOML: {e}") from None
    if "stylize" in data and isinstance(data["stylize"], dict):
        data = {**{k: v for k, v in data.items() if k != "stylize"}, **data["stylize"]}
    known = {f for f in StylizeOptions.__dataclass_fields__} - {"scale_sizes", "scale_steps"}
    out: dict = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known and name not in RECIPE_FILES:
            raise NSTError(f"recipe '{path}': unknown key '{key}'")
        if name == "styles":
            out[name] = _read_styles(path, value)
            continue
        if name == "style" and isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise NSTError(f"recipe '{path}': 'style' must be an image path or a list of them, not {value!r}")
            out[name] = [_rel(path, v) for v in value]
            continue
        if name in _PATH_KEYS:
            if not isinstance(value, str):
                raise NSTError(f"recipe '{path}': '{key}' must be a string, not {value!r}")
            if value not in _NOT_PATHS or name in RECIPE_FILES:
                value = _rel(path, value)
        if isinstance(value, float) and name in ("size", "seed", "save_every", "checkpoint_every"):
            raise NSTError(f"recipe '{path}': '{key}' must be an integer, not {value!r}")
        out[name] = value
    if "style" in out and "styles" in out:
        raise NSTError(f"recipe '{path}': give either 'style' or [[styles]] tables, not both")
    try:
        check_types(StylizeOptions(**{k: v for k, v in out.items() if k not in RECIPE_FILES}))
    except NSTError as e:
        raise NSTError(f"recipe '{path}': {e}") from None
    return out


def _rel(recipe: Path, value: str) -> str:
    return value if Path(value).is_absolute() else str(recipe.parent / value)


def _read_styles(recipe: Path, value) -> list[dict]:
    """The ``[[styles]]`` tables of a recipe, checked, with paths made relative to the recipe."""
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise NSTError(f"recipe '{recipe}': 'styles' must be [[styles]] tables (image, weight, layers, mask, "
                       "style_mask)")
    out = []
    for i, table in enumerate(value, 1):
        spec: dict = {}
        for key, v in table.items():
            name = key.replace("-", "_")
            where = f"recipe '{recipe}': styles[{i}].{key}"
            if name not in STYLE_KEYS:
                raise NSTError(f"{where}: unknown key (use {', '.join(STYLE_KEYS)})")
            if STYLE_KEYS[name]:
                if not isinstance(v, str):
                    raise NSTError(f"{where} must be a path (a string), not {v!r}")
                v = _rel(recipe, v)
            elif name == "weight":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < float("inf")):
                    raise NSTError(f"{where} must be a finite number >= 0, not {v!r}")
                v = float(v)
            else:
                if not isinstance(v, (str, list, dict)):
                    raise NSTError(f"{where} must be a layer list like \"conv1_1,conv2_1\", not {v!r}")
                try:
                    parse_layers(v, "layers")
                except NSTError as e:
                    raise NSTError(f"{where}: {e}") from None
            spec[name] = v
        if "image" not in spec:
            raise NSTError(f"recipe '{recipe}': styles[{i}] has no image")
        out.append(spec)
    return out
