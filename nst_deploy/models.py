"""The bundled style networks and model names, without torch: ``nst run NAME`` resolves here."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import NSTError

__all__ = ["MODELS_DIR", "bundled_models", "bundled_onnx", "int8_beside", "load_paths", "model_path"]

#: Where the bundled models live: ``<arch>__<style>.pt``.
MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"


def bundled_models() -> dict[str, Path]:
    """``{file stem: path}`` of the models shipped with the package."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.pt"))}


def model_path(name: str | os.PathLike) -> Path:
    """A model file's path as given (an nst-export folder: its ``model.onnx``), or the file of a bundled
    model named ``starry_night`` or ``johnson__starry_night`` (``-`` for ``_`` too), or by its architecture
    where one bundled model has it (``multistyle``)."""
    path = Path(name)
    if path.is_dir():  # an nst-export folder: its ONNX model (else its TorchScript one)
        if (path / "manifest.json").is_file():
            for f in ("model.onnx", "model.pt"):
                if (path / f).is_file():
                    return path / f
        raise NSTError(f"model '{name}' is a folder: give a file in it (model.onnx, model.pt or an nst train .pt)")
    if path.exists():
        return path
    bundled = bundled_models()
    key = str(name).lower().replace("-", "_")
    for stem, p in bundled.items():
        if key in (stem, stem.split("__", 1)[-1]):
            return p
    by_arch = [p for stem, p in bundled.items() if stem.split("__", 1)[0] == key]
    if len(by_arch) == 1:  # an architecture with one bundled model: `nst run multistyle`
        return by_arch[0]
    names = ", ".join(stem.split("__", 1)[-1] for stem in bundled) or "none"
    raise NSTError(f"model '{name}' does not exist (bundled models: {names})")


def load_paths(model: Path, on_cpu: bool) -> tuple[Path, Path | None]:
    """``(path, fallback)`` for ``Stylizer.load``: on the CPU a bundled model runs from its int8 ONNX copy (no
    torch to import, ONNX Runtime's int8 speed) with the model file as the fallback for images that need
    tiles (the copies hold no tiles graph); anything else from its own file."""
    fast = bundled_onnx(model) if on_cpu else None
    return (fast, Path(model)) if fast is not None else (Path(model), None)


def int8_beside(onnx: Path) -> Path | None:
    """The int8 model an nst-export folder holds beside its ``model.onnx`` (``nst-export --int8``: listed in
    the manifest, its quality drop checked at export), or None."""
    onnx = Path(onnx)
    int8 = onnx.with_name("model.int8.onnx")
    if onnx.name != "model.onnx" or not int8.is_file():
        return None
    try:
        manifest = json.loads((onnx.parent / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    listed = isinstance(manifest, dict) and isinstance(manifest.get("artifacts"), dict) and \
        (manifest["artifacts"].get("onnx_int8") or {}).get("file") == int8.name
    return int8 if listed else None


def bundled_onnx(model: Path) -> Path | None:
    """The ONNX copy of a bundled model file: ``<name>.int8.onnx`` beside it (``nst-export --int8``'s
    model, its quality drop checked when it was bundled; the network only, no tiles graph), or None for any
    other file. Only the int8 copies are bundled: a float32 one would be the model file again, at 1 MB a
    style (on a GPU the model file runs)."""
    model = Path(model)
    onnx = model.with_suffix(".int8.onnx")
    return onnx if model.parent.resolve() == MODELS_DIR and model.suffix == ".pt" and onnx.is_file() else None
