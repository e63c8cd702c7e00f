"""Export of trained feed-forward networks: TorchScript, ONNX, parity verification, manifest.

Every artifact carries the model's metadata (architecture, configuration, style, input/output
contract, training digest, toolkit version): TorchScript as the extra file ``nst_meta.json``, ONNX in
``metadata_props``. ``manifest.json`` lists every artifact with its sha256 (the runtime loads a
TorchScript file only when its sha256 matches: TorchScript is code).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ..errors import NSTError
from ..fsutil import atomic_write, sha256_file
from ..nets.io import load_model

__all__ = ["FORMATS", "export_model", "export_onnx", "export_torchscript", "verify"]

FORMATS = ("torchscript", "onnx")
META_FILE = "nst_meta.json"
#: Sizes checked by default: odd, non-square, and a batch of two.
VERIFY_SHAPES = ((1, 37, 53), (2, 64, 64), (1, 101, 40))


def _metadata(meta: dict, fmt: str) -> dict:
    from .. import __version__

    keep = {k: meta.get(k) for k in ("arch", "config", "style", "style_sha256", "training_digest", "steps",
                                     "input", "output", "output_scale")}
    keep.update({"format": fmt, "toolkit": __version__, "torch": torch.__version__})
    return keep


def export_torchscript(net: torch.nn.Module, meta: dict, path: Path) -> Path:
    """``torch.jit.script`` the network; metadata as the extra file ``nst_meta.json``; atomic write."""
    try:
        scripted = torch.jit.script(net)
    except Exception as e:  # noqa: BLE001 - the scripting error, in one line
        raise NSTError(f"TorchScript export failed: {str(e).strip().splitlines()[0][:200]}") from None
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={META_FILE: json.dumps(_metadata(meta, "torchscript"))})
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def export_onnx(net: torch.nn.Module, meta: dict, path: Path, opset: int = 18) -> Path:
    """ONNX via ``torch.onnx.export(dynamo=True)`` with dynamic batch, height and width; checked.

    The graph is checked by ``onnx.checker`` (full check) and strict shape inference; the metadata
    goes into ``metadata_props``.
    """
    import onnx

    if opset < 17:
        raise NSTError(f"--opset {opset}: use 17 or later")
    multiple = int(getattr(net, "MULTIPLE", 4))
    x = torch.rand(1, 3, 8 * multiple, 10 * multiple)
    dims = {0: torch.export.Dim("batch", min=1, max=256), 2: torch.export.Dim("height", min=8, max=16384),
            3: torch.export.Dim("width", min=8, max=16384)}
    tmp = path.with_name(f".{path.name}.export")
    # torch.onnx logs a warning for every torchvision op it cannot register when torchvision is absent
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), str(tmp), dynamo=True, dynamic_shapes={"x": dims}, opset_version=opset,
                              input_names=["image"], output_names=["stylized"], external_data=False, verbose=False)
        model = onnx.load(str(tmp))
    except NSTError:
        raise
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"ONNX export failed: {str(e).strip().splitlines()[0][:200]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    for key, value in _metadata(meta, "onnx").items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"the exported ONNX graph does not check: {str(e).strip().splitlines()[0][:200]}") from None
    with atomic_write(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return path


def verify(net: torch.nn.Module, artifacts: dict[str, Path], shapes=VERIFY_SHAPES, rtol: float = 1e-3,
           seed: int = 0) -> dict:
    """Run eager, TorchScript and ONNX Runtime on the same inputs; return the max errors per format.

    Passes when ``|y - y_eager| <= rtol * (1 + |y_eager|)`` everywhere (outputs are in ``[0, 1]``).

    Raises:
        NSTError: a format disagrees (the message names it, the size and the error).
    """
    g = torch.Generator().manual_seed(seed)
    report: dict[str, dict] = {}
    runners = {}
    if "torchscript" in artifacts:
        ts = torch.jit.load(str(artifacts["torchscript"]), map_location="cpu")
        runners["torchscript"] = lambda x: ts(x)
    if "onnx" in artifacts:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(artifacts["onnx"]), providers=["CPUExecutionProvider"])
        runners["onnx"] = lambda x: torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    for b, h, w in shapes:
        x = torch.rand(b, 3, h, w, generator=g)
        with torch.inference_mode():
            ref = net(x).float()
            for fmt, run in runners.items():
                y = run(x).float()
                if y.shape != ref.shape:
                    raise NSTError(f"{fmt} output {tuple(y.shape)} at {b}x3x{h}x{w}, eager gives {tuple(ref.shape)}")
                err = float((y - ref).abs().max())
                worst = float(((y - ref).abs() / (1 + ref.abs())).max())
                report.setdefault(fmt, {"max_abs_error": 0.0, "shapes": []})
                report[fmt]["max_abs_error"] = max(report[fmt]["max_abs_error"], err)
                report[fmt]["shapes"].append([b, 3, h, w])
                if worst > rtol:
                    raise NSTError(f"{fmt} differs from eager PyTorch at {b}x3x{h}x{w}: max error {err:.3g} "
                                   f"(tolerance {rtol:g})")
    return report


def export_model(model_path: str | os.PathLike, out_dir: str | os.PathLike, formats=FORMATS, opset: int = 18,
                 check: bool = True) -> dict:
    """Export a model file to ``out_dir`` (``model.pt`` TorchScript, ``model.onnx``), verify, write the manifest."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise NSTError(f"unknown format {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
    net, meta = load_model(model_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NSTError(f"'{out}' exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Path] = {}
    if "torchscript" in formats:
        artifacts["torchscript"] = export_torchscript(net, meta, out / "model.pt")
    if "onnx" in formats:
        artifacts["onnx"] = export_onnx(net, meta, out / "model.onnx", opset)
    report = verify(net, artifacts) if check else {}
    manifest = {
        "model": Path(model_path).name, "arch": meta.get("arch"), "config": meta.get("config"),
        "style": meta.get("style"), "metadata": _metadata(meta, "manifest"),
        "artifacts": {fmt: {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for fmt, p in artifacts.items()},
        "verification": report or None,
    }
    with atomic_write(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest
