"""Export of trained feed-forward networks: TorchScript, ONNX, parity verification, manifest.

Every artifact carries the model's metadata (architecture, configuration, style, input/output
contract, training digest, toolkit version): TorchScript as the extra file ``nst_meta.json``, ONNX in
``metadata_props``. ``manifest.json`` lists every artifact with its sha256 (the runtime loads a
TorchScript file only when its sha256 matches: TorchScript is code).

Precisions: ``fp32``; ``fp16`` (weights and activations in half precision, float32 input and output:
a drop-in replacement); ``fp16-io`` (fully half, input and output float16 too). Next to ``model.onnx``
goes ``model.tiles.onnx``, the same network with its instance-norm statistics as an input
(:class:`nst_deploy.tiling.StatsGraph`), which the runtime uses to tile images over its memory
budget. ``static=(H, W)`` fixes the ONNX graphs' height and width (for engines that want fixed
shapes); the batch stays dynamic.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nst_deploy.contract import MAX_SIDE, MIN_SIDE, ONNX_INPUT, ONNX_OUTPUT, ONNX_STYLE, PRECISION_NAMES, style_count
from nst_deploy.errors import NSTError
from nst_deploy.fsutil import atomic_write, sha256_file
from nst_deploy.interrupts import interrupts_held
from nst_deploy.nets.io import load_model

__all__ = ["FORMATS", "OPSETS", "PRECISIONS", "export_model", "export_onnx", "export_torchscript", "verify"]

FORMATS = ("torchscript", "onnx")
PRECISIONS = PRECISION_NAMES  # the runtime reads what the export writes
META_FILE = "nst_meta.json"
#: Sizes checked by default: odd, non-square, and a batch of two.
VERIFY_SHAPES = ((1, 37, 53), (2, 64, 64), (1, 101, 40))
#: Tolerance of the parity check per precision.
RTOL = {"fp32": 1e-3, "fp16": 1e-2, "fp16-io": 1e-2}
#: The ONNX opsets exported, lowest and highest. torch.onnx's dynamo exporter (torch 2.13) translates with
#: torchlib, written for opset 18 (``torch.onnx._internal.exporter._constants.TORCHLIB_OPSET``): below it the
#: graph is down-converted, and for these networks that fails and silently leaves opset 18 (asked for 17, a
#: model of 18). Above 23 (``torch.onnx._constants.ONNX_MAX_OPSET``) torch.onnx makes no promise; the
#: converter gives up on unknown opsets (99) and again silently keeps 18. ``export_onnx`` also checks the
#: written model's ``opset_import`` against the opset asked for.
OPSETS = (18, 23)
#: The file names an export writes; the only ones it ever replaces or removes in an output folder.
ARTIFACT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "onnx_tiles": "model.tiles.onnx",
                  "onnx_int8": "model.int8.onnx"}
MANIFEST = "manifest.json"


class Precision(torch.nn.Module):
    """The network in half precision, with float32 (``fp16``) or float16 (``fp16-io``) input and output."""

    def __init__(self, net: torch.nn.Module, io_half: bool):
        super().__init__()
        self.net = net.half()
        self.io_half = io_half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.half())
        if self.io_half:
            return y
        return y.float()


class StyledPrecision(torch.nn.Module):
    """:class:`Precision` for a multistyle network (a second input: the style vector, float32)."""

    def __init__(self, net: torch.nn.Module, io_half: bool):
        super().__init__()
        self.net = net.half()
        self.io_half = io_half

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        y = self.net(x.half(), style)
        if self.io_half:
            return y
        return y.float()


class _TilesPrecision(torch.nn.Module):
    """:class:`~nst_deploy.tiling.StatsGraph` with the same casts as :class:`Precision` (statistics stay float32)."""

    def __init__(self, graph: torch.nn.Module, precision: str):
        super().__init__()
        self.inner = graph.half() if precision != "fp32" else graph
        self.precision = precision

    def forward(self, image: torch.Tensor, stats: torch.Tensor, mix: torch.Tensor, style: torch.Tensor | None = None):
        x = image.half() if self.precision != "fp32" else image
        y, own = self.inner(x, stats, mix, style)
        return (y.float() if self.precision == "fp16" else y), own


def _io_dtype(precision: str) -> torch.dtype:
    return torch.float16 if precision == "fp16-io" else torch.float32


def _metadata(meta: dict, fmt: str) -> dict:
    from nst_deploy import __version__

    keep = {k: meta.get(k) for k in ("arch", "config", "style", "styles", "style_sha256", "training_digest", "steps",
                                     "input", "output", "output_scale", "precision", "static", "tiling")}
    precision = meta.get("precision") or "fp32"
    io = "float16" if precision == "fp16-io" else "float32"
    for side in ("input", "output"):
        if isinstance(keep.get(side), dict):
            keep[side] = dict(keep[side], dtype=io)
    keep.update({"precision": precision, "format": fmt, "toolkit": __version__, "torch": torch.__version__})
    if fmt == "torchscript":  # a scripted module takes any size; --static applies to the ONNX graphs
        keep["static"] = None
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


def _check_opset(opset) -> None:
    low, high = OPSETS
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise NSTError(f"--opset {opset}: ONNX opsets {low} to {high} are supported")


def _dims(static: tuple[int, int] | None) -> dict:
    batch = torch.export.Dim("batch", min=1, max=256)
    if static:
        return {0: batch}
    return {0: batch, 2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
            3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)}


def export_onnx(net: torch.nn.Module, meta: dict, path: Path, opset: int = 18, static: tuple[int, int] | None = None,
                tiles: bool = False, graph_opt: bool = True) -> Path:
    """ONNX via ``torch.onnx.export(dynamo=True)`` with dynamic batch, height and width; checked.

    ``static=(H, W)`` fixes height and width (the batch stays dynamic). ``tiles=True`` exports ``net``
    as a :class:`~nst_deploy.tiling.StatsGraph` (inputs ``image``, ``stats``, ``mix``; outputs
    ``stylized``, ``stats``). Convolutions with few output channels are rewritten in space-to-depth form
    (:mod:`~nst_deploy.export.graph_opt`: exact, faster on the CPU; ``graph_opt=False`` leaves them). The
    graph is checked by ``onnx.checker`` (full check) and strict shape inference; the metadata goes into
    ``metadata_props``.
    """
    import onnx

    _check_opset(opset)
    multiple = int(meta.get("tiling", {}).get("multiple", 4))
    dtype = _io_dtype(meta.get("precision") or "fp32")
    h, w = static or (8 * multiple, 10 * multiple)
    x = torch.rand(1, 3, h, w).to(dtype)
    dims = _dims(static)
    n_styles = style_count(meta)
    style = torch.full((1, n_styles), 1.0 / max(n_styles, 1))
    if tiles:
        n_stats = 2 * sum(meta["tiling"]["norm_channels"])
        args = (x, torch.zeros(1, n_stats), torch.ones(1))
        shapes = {ONNX_INPUT: dims, "stats": {0: dims[0]}, "mix": None}
        names = ([ONNX_INPUT, "stats", "mix"], [ONNX_OUTPUT, "stats_out"])
        if n_styles:
            args = args + (style,)
            names[0].append(ONNX_STYLE)
            shapes[ONNX_STYLE] = {0: dims[0]}
    else:
        params = list(inspect.signature(net.forward).parameters)
        args = (x,) if not n_styles else (x, style)
        shapes = {params[0]: dims} if not n_styles else {params[0]: dims, params[1]: {0: dims[0]}}
        names = ([ONNX_INPUT], [ONNX_OUTPUT]) if not n_styles else ([ONNX_INPUT, ONNX_STYLE], [ONNX_OUTPUT])
    tmp = path.with_name(f".{path.name}.export")
    # torch.onnx logs a warning for every torchvision op it cannot register when torchvision is absent
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, args, str(tmp), dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                              input_names=names[0], output_names=names[1], external_data=False, verbose=False)
        model = onnx.load(str(tmp))
    except NSTError:
        raise
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"ONNX export failed: {str(e).strip().splitlines()[0][:200]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    got = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise NSTError(f"ONNX export asked for opset {opset} but wrote opset {got[0] if got else 'none'}")
    for key, value in _metadata(meta, "onnx_tiles" if tiles else "onnx").items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    if graph_opt and int(meta.get("tiling", {}).get("multiple", 4)) % 2 == 0:  # even sides inside: see graph_opt
        from .graph_opt import space_to_depth_convs

        space_to_depth_convs(model)
    store_exact_fp16(model)
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"the exported ONNX graph does not check: {str(e).strip().splitlines()[0][:200]}") from None
    with atomic_write(path, "wb") as fh:
        fh.write(model.SerializeToString())
    return path


#: Initializers smaller than this stay float32 (a Cast node would outweigh what it saves).
_FP16_MIN_ELEMENTS = 64


def store_exact_fp16(model) -> int:
    """Store the float32 initializers whose every value is exactly a float16 (the weights of a model file
    saved in half precision, as the bundled ones are) as float16, each followed by a Cast back to
    float32: the file is about half the size and computes exactly the same (onnxruntime folds the casts
    when it loads the graph). Returns how many initializers were stored so."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts, done = [], 0
    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.data_location == TensorProto.EXTERNAL:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < _FP16_MIN_ELEMENTS or not np.isfinite(arr).all():
            continue
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            continue
        name = init.name
        graph.initializer[i].CopyFrom(numpy_helper.from_array(half, f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT,
                                      name=f"{name}__to_fp32"))
        done += 1
    for node in reversed(casts):  # before every use: nodes are kept in topological order
        graph.node.insert(0, node)
    return done


def verify(net: torch.nn.Module, artifacts: dict[str, Path], shapes=VERIFY_SHAPES, rtol: float = 1e-3,
           seed: int = 0, io_dtype: torch.dtype = torch.float32, reference: torch.nn.Module | None = None,
           n_styles: int = 0) -> dict:
    """Run eager, TorchScript and ONNX Runtime on the same inputs; return the max errors per format.

    ``net`` is the exported module (in its precision, taking ``io_dtype``); ``reference`` (the float32
    network, default ``net``) gives the ``max_abs_error_vs_fp32`` reported for reduced precisions.
    Passes when ``|y - y_eager| <= rtol * (1 + |y_eager|)`` everywhere (outputs are in ``[0, 1]``).
    The tiles graph (``onnx_tiles``) is checked with its own statistics (``mix = 0``) against eager,
    and with statistics of another image (``mix = 1``) against eager with those statistics.

    A multistyle network (``n_styles``) runs every shape with a random blend of its styles (its second
    input), the same for every format.

    Raises:
        NSTError: a format disagrees (the message names it, the size and the error).
    """
    from nst_deploy.tiling import NormStats

    g = torch.Generator().manual_seed(seed)
    styled = {"w": None}  # the current shape's style vectors, for every runner

    def sty(*args):
        return args if styled["w"] is None else (*args, styled["w"])

    def feeds(x: torch.Tensor, **more) -> dict:
        f = {ONNX_INPUT: x.numpy(), **{k: v.numpy() for k, v in more.items()}}
        if styled["w"] is not None:
            f[ONNX_STYLE] = styled["w"].numpy()
        return f

    report: dict[str, dict] = {}
    runners = {}
    if "torchscript" in artifacts:
        ts = torch.jit.load(str(artifacts["torchscript"]), map_location="cpu")
        runners["torchscript"] = lambda x: ts(*sty(x))
    sessions = {}
    for fmt in ("onnx", "onnx_tiles"):
        if fmt in artifacts:
            import onnxruntime as ort

            sessions[fmt] = ort.InferenceSession(str(artifacts[fmt]), providers=["CPUExecutionProvider"])
    if "onnx" in sessions:
        runners["onnx"] = lambda x: torch.from_numpy(sessions["onnx"].run(None, feeds(x))[0])
    if "onnx_tiles" in sessions:
        def tiles(x: torch.Tensor) -> torch.Tensor:
            n = sessions["onnx_tiles"].get_inputs()[1].shape[1]
            out = sessions["onnx_tiles"].run(None, feeds(x, stats=torch.zeros(x.shape[0], n), mix=torch.zeros(1)))
            return torch.from_numpy(out[0])

        runners["onnx_tiles"] = tiles

    def record(fmt: str, shape, y: torch.Tensor, ref: torch.Tensor, ref32: torch.Tensor | None) -> None:
        b, _, h, w = shape
        if y.shape != ref.shape:
            raise NSTError(f"{fmt} output {tuple(y.shape)} at {b}x3x{h}x{w}, eager gives {tuple(ref.shape)}")
        err = float((y - ref).abs().max())
        worst = float(((y - ref).abs() / (1 + ref.abs())).max())
        r = report.setdefault(fmt, {"max_abs_error": 0.0, "shapes": []})
        r["max_abs_error"] = max(r["max_abs_error"], err)
        r["shapes"].append([b, 3, h, w])
        if ref32 is not None:
            r["max_abs_error_vs_fp32"] = max(r.get("max_abs_error_vs_fp32", 0.0), float((y - ref32).abs().max()))
        if worst > rtol:
            raise NSTError(f"{fmt} differs from eager PyTorch at {b}x3x{h}x{w}: max error {err:.3g} "
                           f"(tolerance {rtol:g})")

    for b, h, w in shapes:
        x = torch.rand(b, 3, h, w, generator=g).to(io_dtype)
        if n_styles:
            w8 = torch.rand(b, n_styles, generator=g)
            styled["w"] = w8 / w8.sum(1, keepdim=True)
        with torch.inference_mode():
            ref = net(*sty(x)).float()
            ref32 = reference(*sty(x.float())).float() if reference is not None else None
            for fmt, run in runners.items():
                record(fmt, (b, 3, h, w), run(x).float(), ref, ref32)
    if "onnx_tiles" in sessions and reference is None:  # shared statistics (tiling), float32 only
        b, h, w = shapes[0]
        x, other = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h + 8, w + 4, generator=g)
        rec = NormStats()
        with torch.inference_mode():
            with rec:
                net(*sty(other))
            stats = rec.flat()
            with NormStats(given=stats):
                ref = net(*sty(x)).float()
        y = sessions["onnx_tiles"].run(None, feeds(x, stats=stats, mix=torch.ones(1)))[0]
        record("onnx_tiles", (b, 3, h, w), torch.from_numpy(y).float(), ref, None)
    return report


def _name(model_path: Path) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in model_path.stem).lstrip(".") or "model"


def _previous_export(out: Path) -> set[str]:
    """The artifact files an existing output folder holds from a previous export (removed once the new export
    is in place); refuses a folder that holds artifact names but no nst-export manifest (not ours to replace).

    Only the names in :data:`ARTIFACT_FILES` are ever replaced or removed; any other file is left alone.
    """
    if not out.is_dir():
        return set()
    present = {f for f in ARTIFACT_FILES.values() if os.path.lexists(out / f)}
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        ours = isinstance(manifest, dict) and isinstance(manifest.get("artifacts"), dict)
    except (OSError, ValueError):
        ours = False
    if present and not ours:
        raise NSTError(f"'{out}' holds {', '.join(sorted(present))} but no nst-export {MANIFEST}: not an export "
                       "folder, so nothing there is replaced; choose another folder or move the files away")
    if os.path.lexists(out / MANIFEST) and not ours:
        raise NSTError(f"'{out}' holds a {MANIFEST} that nst-export did not write: choose another folder")
    return present


def _mkdirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created (outermost first)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    return created


def _commit(stage: Path, out: Path, written: list[str], stale: set[str]) -> None:
    """Move the staged export into ``out``: the whole staging folder when ``out`` does not exist, else the
    artifacts, then the manifest, then remove the previous export's artifacts that this one did not write."""
    if not os.path.lexists(out):
        try:
            os.rename(stage, out)
            return
        except OSError:
            if not out.is_dir():
                raise
    for f in written:
        os.replace(stage / f, out / f)
    os.replace(stage / MANIFEST, out / MANIFEST)
    for f in sorted(stale - set(written)):
        with contextlib.suppress(FileNotFoundError):
            (out / f).unlink()
    shutil.rmtree(stage, ignore_errors=True)


def export_model(model_path: str | os.PathLike, out_dir: str | os.PathLike, formats=FORMATS, opset: int = 18,
                 check: bool = True, precision: str = "fp32", static: tuple[int, int] | None = None,
                 triton_repo: str | os.PathLike | None = None, triton: dict | None = None, log=None,
                 int8: bool = False, calibration: str | os.PathLike | None = None, graph_opt: bool = True) -> dict:
    """Export a model file to ``out_dir``, verify, write the manifest (and a Triton model repository).

    Writes ``model.pt`` (TorchScript), ``model.onnx`` and ``model.tiles.onnx`` (ONNX; the tiles graph
    is left out for ``static`` exports) and ``manifest.json``. ``precision`` is one of
    :data:`PRECISIONS`; ``static=(H, W)`` fixes the ONNX height and width; ``triton_repo`` also writes
    an NVIDIA Triton model repository (``triton``: keyword arguments of
    :func:`~nst_deploy.export.triton.write_triton_repo`, e.g. ``max_batch_size``, ``instances``).
    ``int8`` also writes ``model.int8.onnx`` (:mod:`~nst_deploy.export.quantize`: calibrated on the photographs
    of the ``calibration`` folder, else the bundled ones), refused if its quality drop passes
    :data:`~nst_deploy.export.quantize.BOUNDS`; the drop is recorded in the manifest (``int8``).
    ``graph_opt=False`` leaves out the exact graph rewrites of :mod:`~nst_deploy.export.graph_opt`.

    Every argument, the output folder and the Triton repository are checked before any work. The files are
    built in a staging folder and moved into ``out_dir`` only when all of them, verification included,
    succeeded: on any failure or interrupt ``out_dir`` is left as it was. An existing ``out_dir`` may hold
    other files (left alone); once the new export is in place, the previous export's artifacts that it did
    not rewrite (``model.pt``, ``model.onnx``, ``model.tiles.onnx``) are removed, so the folder holds exactly
    the new export. A folder holding such names without an nst-export ``manifest.json`` is refused.

    Raises:
        NSTError: unknown format, precision or opset, bad static size, unreadable model, an output folder or
            Triton repository that cannot be written, export or parity failure.
    """
    from nst_deploy.fsutil import check_folder

    from .triton import check_triton_repo

    log = log or (lambda msg: None)
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise NSTError(f"unknown format {', '.join(bad) or '(none)'}: choose from {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise NSTError(f"unknown precision '{precision}': choose from {', '.join(PRECISIONS)}")
    _check_opset(opset)
    if int8 and ("onnx" not in formats or precision != "fp32"):
        raise NSTError("--int8 quantizes the float32 ONNX export: keep the onnx format and leave out --fp16")
    if calibration is not None and not int8:
        raise NSTError("--calibration is for --int8")
    if calibration is not None and not Path(calibration).is_dir():
        raise NSTError(f"calibration folder '{calibration}' is not a folder")
    if triton_repo is not None:  # the Triton arguments and repository are checked before anything is exported
        t = dict(triton or {})
        if int(t.get("max_batch_size", 8)) < 0 or int(t.get("instances", 1)) < 1:
            raise NSTError("Triton: max_batch_size must be >= 0 and instances >= 1")
        if t.get("kind", "gpu") not in ("gpu", "cpu"):
            raise NSTError(f"Triton: kind must be gpu or cpu, not {t.get('kind')!r}")
        if t.get("tensorrt_fp16") and ("onnx" not in formats or t.get("kind", "gpu") != "gpu"):
            raise NSTError("Triton: the TensorRT fp16 accelerator needs the onnx format and GPU instances")
        if t.get("python") and "onnx" not in formats:
            raise NSTError("Triton: the Python-backend model runs the ONNX export: add the onnx format")
        check_triton_repo(triton_repo, _name(Path(model_path)), [*formats, *(["python"] if t.get("python") else [])])
    out = Path(out_dir)
    check_folder(out, "output folder")
    stale = _previous_export(out)
    net, meta = load_model(model_path)
    multiple = int(getattr(net, "MULTIPLE", 4))
    if static is not None:
        static = (int(static[0]), int(static[1]))
        if min(static) < MIN_SIDE or max(static) > MAX_SIDE or static[0] % multiple or static[1] % multiple:
            raise NSTError(f"--static {static[0]} {static[1]}: height and width must be multiples of {multiple} "
                           f"between {MIN_SIDE} and {MAX_SIDE}")
    # Everything is built in a staging folder (inside `out` when it exists, else beside it) and moved into
    # place only once exported, verified and described by the manifest: a failure or an interrupt (the
    # staging folder is removed on any exception, KeyboardInterrupt included) leaves `out` as it was.
    created: list[Path] = []
    try:
        created = _mkdirs(out.parent)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.nst-export-", dir=out if out.is_dir() else out.parent))
    except OSError as e:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise NSTError(f"cannot write the output folder '{out}': {e.strerror or e}") from None
    try:
        spec = _ExportSpec(Path(model_path), net, meta, formats, opset, check, precision, static, multiple,
                           triton_repo, triton, log, int8, calibration, graph_opt)
        manifest = _export_into(stage, out, spec)
        written = [a["file"] for a in manifest["artifacts"].values()]
        # an interrupt while the finished export is moved into place (milliseconds) would leave a
        # half-replaced folder: it is held off, and the export completes
        with interrupts_held(lambda: log("interrupt received while moving the export into place: "
                                         "the export was completed")):
            try:
                _commit(stage, out, written, stale)
            except OSError as e:
                raise NSTError(f"cannot write the output folder '{out}': {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return manifest


def _int8(stage: Path, artifacts: dict[str, Path], spec: _ExportSpec, n_styles: int) -> dict:
    """``model.int8.onnx`` from the staged ``model.onnx``, its quality drop measured and bounded."""
    import numpy as np

    from nst_deploy.imageio import read_rgb

    from .quantize import BOUNDS, calibration_images, int8_drift, quantize_int8

    source = str(spec.calibration) if spec.calibration is not None else "the bundled photographs"
    spec.log(f"ONNX: int8 quantization, calibrated on {source}")
    images = calibration_images(spec.calibration)
    path = quantize_int8(artifacts["onnx"], stage / ARTIFACT_FILES["onnx_int8"], images, n_styles)
    spec.log("measuring the int8 model's quality drop")
    data = Path(__file__).resolve().parents[1] / "nst_deploy" / "data"
    photos = [np.ascontiguousarray((read_rgb(data / n, size=384)).transpose(2, 0, 1)[None], dtype=np.float32)
              for n in ("chelsea.jpg", "coffee.jpg")]
    drift = int8_drift(artifacts["onnx"], path, photos, n_styles)
    worst = drift["worst"]
    bad = [f"{k} {worst[k]:.3g} (bound {b:g})" for k, b in BOUNDS.items()
           if (worst[k] < b if k == "psnr_db" else worst[k] > b)]
    if bad:
        raise NSTError(f"the int8 model loses too much against the float32 one: {', '.join(bad)}; export without "
                       f"--int8, or calibrate on photographs like yours with --calibration DIR")
    artifacts["onnx_int8"] = path
    return {"calibration": source, "calibration_images": len(images), "bounds": BOUNDS, "worst": worst,
            "photos": [dict(name=n, **{k: round(v, 4) for k, v in r.items()})
                       for n, r in zip(("chelsea.jpg", "coffee.jpg"), drift["photos"], strict=True)]}


@dataclass(frozen=True)
class _ExportSpec:
    """One export, its arguments checked: the model file and its loaded network and metadata, what to
    write (formats, opset, precision, static size, Triton repository) and how (verification, log)."""

    model_path: Path
    net: torch.nn.Module
    meta: dict
    formats: tuple[str, ...]
    opset: int
    check: bool
    precision: str
    static: tuple[int, int] | None
    multiple: int
    triton_repo: str | os.PathLike | None
    triton: dict | None
    log: Callable[[str], None]
    int8: bool = False
    calibration: str | os.PathLike | None = None
    graph_opt: bool = True


def _export_into(stage: Path, out: Path, spec: _ExportSpec) -> dict:
    """The export proper, every file written into ``stage``; returns the manifest (written there too)."""
    from nst_deploy.tiling import probe

    net, precision, static, log = spec.net, spec.precision, spec.static, spec.log
    n_styles = style_count(spec.meta)
    if n_styles:  # probe the network with one style bound (the layout of its norms is the same for every style)
        first = torch.zeros(1, n_styles)
        first[0, 0] = 1.0
        probed = probe(lambda x: net(x, first.expand(x.shape[0], -1)), multiple=spec.multiple)
    else:
        probed = probe(net, multiple=spec.multiple)
    meta = dict(spec.meta, precision=precision, static=list(static) if static else None, tiling=probed)
    wrap = StyledPrecision if n_styles else Precision
    module = net if precision == "fp32" else wrap(copy.deepcopy(net), io_half=precision == "fp16-io").eval()
    artifacts: dict[str, Path] = {}
    try:
        if "torchscript" in spec.formats:
            log("TorchScript: scripting")
            artifacts["torchscript"] = export_torchscript(module, meta, stage / ARTIFACT_FILES["torchscript"])
        if "onnx" in spec.formats:
            log("ONNX: exporting the network")
            artifacts["onnx"] = export_onnx(module, meta, stage / ARTIFACT_FILES["onnx"], spec.opset, static=static,
                                            graph_opt=spec.graph_opt)
            if static is None:
                from nst_deploy.tiling import StatsGraph

                log("ONNX: exporting the tiles graph (instance-norm statistics as an input)")
                graph = _TilesPrecision(StatsGraph(net), precision).eval()
                artifacts["onnx_tiles"] = export_onnx(graph, meta, stage / ARTIFACT_FILES["onnx_tiles"], spec.opset,
                                                      tiles=True, graph_opt=spec.graph_opt)
    except OSError as e:
        raise NSTError(f"cannot write the output folder '{out}': {e.strerror or e}") from None
    report = {}
    if spec.check:
        log("verifying against eager PyTorch")
        shapes = VERIFY_SHAPES if static is None else ((1, *static), (2, *static))
        report = verify(module, artifacts, shapes=shapes, rtol=RTOL[precision], io_dtype=_io_dtype(precision),
                        reference=None if precision == "fp32" else net, n_styles=n_styles)
    quantized = _int8(stage, artifacts, spec, n_styles) if spec.int8 else None
    manifest = {
        "model": Path(spec.model_path).name, "arch": meta.get("arch"), "config": meta.get("config"),
        "style": meta.get("style"), "precision": precision, "static": meta["static"],
        "opset": spec.opset if "onnx" in artifacts else None,
        "metadata": _metadata(meta, "manifest"),
        "artifacts": {fmt: {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for fmt, p in artifacts.items()},
        "verification": report or None,
        "graph_opt": spec.graph_opt,
    }
    if quantized is not None:
        manifest["int8"] = quantized
    if spec.triton_repo is not None:
        from .triton import write_triton_repo

        served = {f: p for f, p in artifacts.items() if f in FORMATS}
        written = write_triton_repo(spec.triton_repo, _name(Path(spec.model_path)), served,
                                    io_dtype="fp16" if precision == "fp16-io" else "fp32", static_hw=static,
                                    output_scale=int(meta.get("output_scale") or 1), meta=_metadata(meta, "triton"),
                                    n_styles=n_styles, **(spec.triton or {}))
        manifest["triton_repo"] = written
        log(f"Triton model repository: {spec.triton_repo}")
    try:
        with atomic_write(stage / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1)
    except OSError as e:
        raise NSTError(f"cannot write the output folder '{out}': {e.strerror or e}") from None
    return manifest
