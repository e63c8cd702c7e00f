"""A model repository for NVIDIA Triton Inference Server from exported style-transfer networks.

:func:`write_triton_repo` lays out, under a repository folder::

    REPO/
      NAME/                      ONNX model (ONNX Runtime backend, platform "onnxruntime_onnx")
        config.pbtxt
        1/model.onnx
      NAME_torchscript/          TorchScript model (LibTorch backend, platform "pytorch_libtorch")
        config.pbtxt
        1/model.pt
      NAME_python/               with python=True: the ONNX model run by ONNX Runtime in Triton's Python
        config.pbtxt             backend (backend "python"; 1/model.py is export/triton_model.py), which
        1/model.py               any Triton build with the Python backend loads, the CPU-only server
        1/model.onnx             binary of ``nst serve`` included

Each ``config.pbtxt`` is an ``inference.ModelConfig`` message in protobuf text format (Triton's
``model_config.proto``): the tensors with their data type and shape, the batch size, the instance
group, dynamic batching, a version policy that serves only the newest version, and the model's
metadata (style, architecture, toolkit version) as ``parameters``. The model files are copied
atomically (written beside the destination, then renamed).

Serve the folder with::

    tritonserver --model-repository REPO

then send an ``image`` tensor (NCHW RGB in [0, 1]) to ``NAME`` (the ONNX model; output ``stylized``) or an
``INPUT__0`` tensor to ``NAME_torchscript`` (output ``OUTPUT__0``), e.g. over HTTP at
``localhost:8000/v2/models/NAME/infer``. With ``max_batch_size`` > 0 (the default) a request's tensor
carries the batch dimension: shape ``[N, 3, H, W]`` with ``N <= max_batch_size``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from nst_deploy.contract import MAX_SIDE, MIN_SIDE, ONNX_INPUT, ONNX_OUTPUT, ONNX_STYLE
from nst_deploy.errors import NSTError
from nst_deploy.fsutil import atomic_write, check_folder

__all__ = ["MAX_PIXELS", "check_triton_repo", "write_serve_model", "write_triton_repo"]

#: Triton platform, model file name and tensor names per export format. The LibTorch backend cannot
#: read tensor names from a TorchScript file, so its configuration names them ``<name>__<index>``
#: (position in ``forward``'s arguments / in the returned values): Triton's documented convention
#: ("Special Conventions for PyTorch Backend", server docs/user_guide/model_configuration.md), which
#: every backend version accepts, whatever ``forward``'s argument is called.
_FORMATS = {
    "onnx": {"platform": "onnxruntime_onnx", "file": "model.onnx", "suffix": "",
             "input": ONNX_INPUT, "output": ONNX_OUTPUT, "style": ONNX_STYLE},
    "torchscript": {"platform": "pytorch_libtorch", "file": "model.pt", "suffix": "_torchscript",
                    "input": "INPUT__0", "output": "OUTPUT__0", "style": "INPUT__1"},
    # The Python backend running the ONNX file through ONNX Runtime (model.py: triton_model.py beside this file).
    "python": {"backend": "python", "file": "model.onnx", "suffix": "_python",
               "input": ONNX_INPUT, "output": ONNX_OUTPUT, "style": ONNX_STYLE},
}
#: The Python-backend model, copied as ``1/model.py``.
MODEL_PY = Path(__file__).with_name("triton_model.py")
#: Default most pixels (images x height x width) of one request to a Python-backend model: one 4K frame.
MAX_PIXELS = 3840 * 2160
_DTYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: The metadata keys copied into ``parameters`` (as ``nst_<key>``), when present in ``meta``.
_META_KEYS = ("style", "arch", "toolkit", "toolkit_version", "style_sha256", "training_digest")
#: Temporary names left by an interrupted ``atomic_write`` of one of our files: tolerated, never deleted.
_OUR_TMP = re.compile(r"\.(config\.pbtxt|model\.onnx|model\.pt|model\.py)\..+\.tmp")


def _quote(value: str) -> str:
    """A protobuf text-format string literal: ASCII, with C escapes (UTF-8 bytes as octal escapes)."""
    out = []
    for b in value.encode("utf-8"):
        c = chr(b)
        if c in "\\\"'":
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _dims(values) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"


def _check_int(value, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise NSTError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _check_args(name, artifacts, io_dtype, static_hw, output_scale, max_batch_size, instances, kind,
                tensorrt_fp16) -> tuple[dict[str, Path], tuple[int, int] | None]:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise NSTError(f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-', not starting with '.'")
    if not artifacts:
        raise NSTError("no artifacts to put in the Triton repository (give an 'onnx' and/or a 'torchscript' file)")
    unknown = sorted(str(f) for f in artifacts if f not in _FORMATS)
    if unknown:
        raise NSTError(f"unknown format {', '.join(unknown)} for Triton: choose from {', '.join(_FORMATS)}")
    files = {fmt: Path(p) for fmt, p in artifacts.items()}
    for fmt, path in files.items():
        if not path.is_file():
            raise NSTError(f"{fmt} artifact '{path}' does not exist or is not a file")
    if io_dtype not in _DTYPES:
        raise NSTError(f"unknown io dtype {io_dtype!r}: choose from {', '.join(_DTYPES)}")
    if kind not in _KINDS:
        raise NSTError(f"unknown instance kind {kind!r}: choose from {', '.join(_KINDS)}")
    _check_int(max_batch_size, "max_batch_size", 0)
    _check_int(instances, "instances", 1)
    _check_int(output_scale, "output_scale", 1)
    hw = None
    if static_hw is not None:
        try:
            h, w = static_hw
        except (TypeError, ValueError):
            raise NSTError(f"static size must be (height, width), got {static_hw!r}") from None
        hw = (_check_int(h, "static height", 1), _check_int(w, "static width", 1))
    if tensorrt_fp16 and kind != "gpu":
        raise NSTError("tensorrt_fp16 needs GPU instances (kind 'gpu')")
    if tensorrt_fp16 and "onnx" not in files:
        raise NSTError("tensorrt_fp16 applies to the ONNX model only, and no onnx artifact was given")
    return files, hw


def check_triton_repo(repo_dir, name: str, formats) -> None:
    """What :func:`write_triton_repo` checks of the repository before writing, without any artifact yet.

    ``repo_dir`` must be a folder (or creatable in a writable one), ``name`` an allowed model name, and the
    model folders of ``formats`` must hold nothing but what nst-export writes. Run before exporting, so
    that a bad repository is refused before minutes of work.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("."):
        raise NSTError(f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-', not starting with '.'")
    repo = Path(repo_dir)
    check_folder(repo, "Triton repository")
    for fmt in _FORMATS:
        if fmt in formats:
            _check_model_dir(repo / (name + _FORMATS[fmt]["suffix"]), _files(_FORMATS[fmt]))


def _files(spec: dict) -> set[str]:
    """The files nst-export writes in a model's ``1/`` folder."""
    return {spec["file"], "model.py"} if spec.get("backend") == "python" else {spec["file"]}


def _check_model_dir(model_dir: Path, model_files: set[str]) -> None:
    """Refuse a model folder holding anything but what we write (``config.pbtxt``, ``1/<model_files>``)."""
    if not os.path.lexists(model_dir):
        return
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise NSTError(f"'{model_dir}' exists and is not a folder written by nst-export")
    allowed = {"config.pbtxt": "file", "1": "dir"}
    for entry in model_dir.iterdir():
        _check_entry(entry, allowed, model_dir)
        if entry.name == "1":
            for inner in entry.iterdir():
                _check_entry(inner, dict.fromkeys(model_files, "file"), model_dir)


def _check_entry(entry: Path, allowed: dict[str, str], model_dir: Path) -> None:
    if _OUR_TMP.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
        return
    want = allowed.get(entry.name)
    ok = want is not None and not entry.is_symlink() and (entry.is_dir() if want == "dir" else entry.is_file())
    if not ok:
        raise NSTError(f"'{model_dir}' holds '{entry.relative_to(model_dir)}', which nst-export did not write: "
                       f"choose another name or move it away (nothing is deleted)")


def _config(model_name: str, spec: dict, *, io_dtype: str, hw: tuple[int, int] | None, output_scale: int,
            max_batch_size: int, instances: int, kind: str, tensorrt_fp16: bool, params: dict[str, str],
            n_styles: int = 0, max_queue_delay_us: int = 0, timeout_us: int = 0, dynamic_batching: bool = True) -> str:
    if hw is None:
        in_dims, out_dims = [3, -1, -1], [3, -1, -1]
    else:
        in_dims, out_dims = [3, hw[0], hw[1]], [3, hw[0] * output_scale, hw[1] * output_scale]
    if max_batch_size == 0:
        # No batching by Triton: dims are the full tensor shape, batch dimension included (the exported
        # graphs keep a dynamic batch dimension, so any N is accepted).
        in_dims, out_dims = [-1, *in_dims], [-1, *out_dims]
    dtype = _DTYPES[io_dtype]
    lines = [
        f"# Written by nst-export. Serve with: tritonserver --model-repository <the folder holding {model_name}/>",
        f"name: {_quote(model_name)}",
        (f"backend: {_quote(spec['backend'])}" if spec.get("backend") else f"platform: {_quote(spec['platform'])}"),
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        f"    name: {_quote(spec['input'])}",
        f"    data_type: {dtype}",
        f"    dims: {_dims(in_dims)}",
        "  }",
        *([] if not n_styles else [  # a multistyle network's style vector (float32 weights, one per style)
            "  ,{",
            f"    name: {_quote(spec['style'])}",
            "    data_type: TYPE_FP32",
            f"    dims: {_dims([n_styles] if max_batch_size else [-1, n_styles])}",
            # the Python-backend model takes style 0 when a request has no style vector
            *(["    optional: true"] if spec.get("backend") == "python" else []),
            "  }"]),
        "]",
        "output [",
        "  {",
        f"    name: {_quote(spec['output'])}",
        f"    data_type: {dtype}",
        f"    dims: {_dims(out_dims)}",
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {_KINDS[kind]}",
        "  }",
        "]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    if max_batch_size > 0:
        # Dynamic batching whenever Triton may batch (max_batch_size > 0), static or dynamic image size.
        # Triton's dynamic batcher only puts requests together when every input has the same shape in all
        # of them (unless an input sets allow_ragged_batch, which we do not; see Triton's ragged batching
        # docs), so images of different sizes are never mixed in one batch: requests of one size are batched
        # together, which is what a service receiving fixed-size images (the common case) gains from, and a
        # request of another size simply runs in a batch of its own. So the rule is not "static shapes only".
        # max_queue_delay_microseconds defaults to 0 (Triton's default): no request waits for others to arrive.
        # With max_batch_size 0 Triton does no batching at all, and a batcher would be pointless.
        batcher = []
        if not dynamic_batching:  # requests still queue here (for the timeout) but run one by one
            batcher.append("  preferred_batch_size: [ 1 ]")
        elif max_queue_delay_us:  # wait this long for more requests of the same shape to batch with
            batcher.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
        if timeout_us:  # a request still queued after this long is refused (clients may ask for less)
            batcher += ["  default_queue_policy {", "    timeout_action: REJECT",
                        f"    default_timeout_microseconds: {timeout_us}", "    allow_timeout_override: true", "  }"]
        lines += ["dynamic_batching {", *batcher, "}"] if batcher else ["dynamic_batching { }"]
    if tensorrt_fp16 and spec["platform"] == "onnxruntime_onnx" and kind == "gpu":
        # The ONNX Runtime backend's TensorRT execution provider, building FP16 engines (Accelerator.parameters
        # is a map<string, string>). With dynamic image sizes TensorRT builds an engine per new shape.
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            '        parameters { key: "precision_mode" value: "FP16" }',
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def _python_params(runtime: str, model: str, *, n_styles: int, output_scale: int, max_pixels: int,
                   memory_mb: float | None = None, threads: int = 0) -> dict[str, str]:
    """The ``parameters`` that tell ``triton_model.py`` what to run and what to accept."""
    params = {"nst_runtime": runtime, "nst_model": model, "nst_max_pixels": str(max_pixels),
              "nst_min_side": str(MIN_SIDE), "nst_max_side": str(MAX_SIDE), "nst_n_styles": str(n_styles),
              "nst_output_scale": str(output_scale)}
    if memory_mb:
        params["nst_memory_mb"] = f"{memory_mb:g}"
    if threads:
        params["nst_threads"] = str(threads)
    return params


def write_triton_repo(repo_dir, name: str, artifacts: dict, *, io_dtype: str = "fp32",
                      static_hw: tuple[int, int] | None = None, output_scale: int = 1, max_batch_size: int = 8,
                      instances: int = 1, kind: str = "gpu", meta: dict | None = None,
                      tensorrt_fp16: bool = False, n_styles: int = 0, python: bool = False,
                      max_pixels: int = MAX_PIXELS) -> dict:
    """Write a Triton model repository (``config.pbtxt`` and version ``1``) for exported networks.

    The ONNX model goes to ``repo_dir/<name>/`` (platform ``onnxruntime_onnx``, tensors ``image`` and
    ``stylized``); the TorchScript model to ``repo_dir/<name>_torchscript/`` (platform
    ``pytorch_libtorch``, tensors ``INPUT__0`` and ``OUTPUT__0`` per the LibTorch backend's naming
    convention); with ``python``, the ONNX model also to ``repo_dir/<name>_python/`` (Python backend,
    ``model.py`` running it through ONNX Runtime, float32 ``image`` and ``stylized`` whatever the export's
    precision). Our own ``config.pbtxt`` and ``1/model.*`` are overwritten; a model folder holding
    anything else is refused, and nothing is deleted. Every argument is checked before anything is written.

    Args:
        repo_dir: The model repository folder (created if missing).
        name: The model name: letters, digits, ``_``, ``.``, ``-``, not starting with ``.``.
        artifacts: Export format (``"onnx"``, ``"torchscript"``) to the path of the exported file.
        io_dtype: ``"fp32"``, or ``"fp16"`` for the fully-fp16 export (input and output both float16).
        static_hw: ``(height, width)`` of a static-size export; ``None`` for dynamic height and width.
        output_scale: Output size over input size (1 for the Johnson network; 2 or 4 for the multimodal one).
        max_batch_size: The largest batch Triton forms; 0 turns Triton's batching off (the dims then
            include the batch dimension).
        instances: Model instances (per GPU for ``kind="gpu"``).
        kind: ``"gpu"`` (``KIND_GPU``) or ``"cpu"`` (``KIND_CPU``).
        meta: The model's metadata; ``style``, ``arch``, ``toolkit`` (or ``toolkit_version``),
            ``style_sha256`` and ``training_digest``, where present, become ``parameters`` named ``nst_<key>``.
        tensorrt_fp16: For the ONNX model on GPU, run it through ONNX Runtime's TensorRT execution provider
            in FP16 precision.
        n_styles: A multistyle network's style count: a second input, the style vector (``style`` for
            ONNX, ``INPUT__1`` for TorchScript), float32, ``n_styles`` wide.
        python: Also write the Python-backend model ``<name>_python`` (needs the onnx artifact).
        max_pixels: The Python-backend model's most pixels (images x height x width) per request.

    Returns:
        ``{"repo": ..., "models": {format: {"name", "dir", "config", "model"}}}``, paths as strings.

    Raises:
        NSTError: A bad name or argument, an unknown format, no artifacts, a missing artifact file, or a
            model folder (or its ``1/``) holding files nst-export did not write.
    """
    files, hw = _check_args(name, artifacts, io_dtype, static_hw, output_scale, max_batch_size, instances, kind,
                            tensorrt_fp16)
    if python:
        if "onnx" not in files:
            raise NSTError("the Python-backend Triton model runs the ONNX export, and no onnx artifact was given")
        files["python"] = files["onnx"]
    _check_int(max_pixels, "max_pixels", 1)
    repo = Path(repo_dir)
    if os.path.lexists(repo) and not repo.is_dir():
        raise NSTError(f"'{repo}' exists and is not a folder")
    params: dict[str, str] = {}
    for key in _META_KEYS:
        value = (meta or {}).get(key)
        if value is not None and not isinstance(value, (dict, list, tuple)):
            params[f"nst_{key}"] = str(value)
    params["nst_io_dtype"] = io_dtype
    params["nst_output_scale"] = str(output_scale)
    plan = []
    for fmt in _FORMATS:  # a fixed order: onnx, torchscript, python
        if fmt not in files:
            continue
        spec = _FORMATS[fmt]
        model_name = name + spec["suffix"]
        model_dir = repo / model_name
        _check_model_dir(model_dir, _files(spec))
        plan.append((fmt, spec, model_name, model_dir))
    written: dict[str, dict[str, str]] = {}
    for fmt, spec, model_name, model_dir in plan:
        extra = {"INFERENCE_MODE": "true"} if fmt == "torchscript" else {}  # LibTorch backend: no autograd
        if fmt == "python":
            extra = _python_params("onnxruntime", spec["file"], n_styles=n_styles, output_scale=output_scale,
                                   max_pixels=max_pixels)
        text = _config(model_name, spec, io_dtype="fp32" if fmt == "python" else io_dtype, hw=hw,
                       output_scale=output_scale, max_batch_size=max_batch_size, instances=instances, kind=kind,
                       tensorrt_fp16=tensorrt_fp16 and fmt == "onnx", params={**params, **extra},
                       n_styles=n_styles)
        version_dir = model_dir / "1"
        copies = [(files[fmt], version_dir / spec["file"])]
        if fmt == "python":
            copies.append((MODEL_PY, version_dir / "model.py"))
        try:
            version_dir.mkdir(parents=True, exist_ok=True)
            for src_path, dst_path in copies:
                with open(src_path, "rb") as src, atomic_write(dst_path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            config_path = model_dir / "config.pbtxt"
            with atomic_write(config_path, "w") as fh:
                fh.write(text)
        except OSError as e:
            raise NSTError(f"cannot write the Triton model '{model_dir}': {e.strerror or e}") from None
        written[fmt] = {"name": model_name, "dir": str(model_dir), "config": str(config_path),
                        "model": str(copies[0][1])}
    return {"repo": str(repo), "models": written}


def write_serve_model(repo_dir, name: str, model: str | os.PathLike, *, fallback: str | os.PathLike | None = None,
                      n_styles: int = 0, output_scale: int = 1, static_hw: tuple[int, int] | None = None,
                      max_batch_size: int = 8, dynamic_batching: bool = True, max_queue_delay_us: int = 0,
                      timeout_us: int = 0, instances: int = 1, kind: str = "cpu", max_pixels: int = MAX_PIXELS,
                      memory_mb: float | None = None, threads: int = 0, meta: dict | None = None) -> str:
    """Write the Python-backend model ``repo_dir/<name>/`` that serves ``model`` (any file the runtime loads,
    referenced by its absolute path, not copied) through ``nst_deploy.Stylizer``: what ``nst serve`` runs.

    ``fallback`` is the runtime's model file for images that need tiles when ``model`` cannot tile (see
    ``Stylizer.load``). ``dynamic_batching`` lets Triton's batcher put queued same-shape requests together
    (off: it hands them over one by one, ``preferred_batch_size: [1]``, so that the queue and its timeout
    stay); ``max_queue_delay_us`` is its wait for more requests; ``timeout_us`` (0: none) refuses a request
    still queued after that long. ``memory_mb`` and ``threads`` are each instance's working-memory budget (larger
    images run in tiles) and CPU threads. Returns the model folder.
    """
    spec = dict(_FORMATS["python"], file="model.py")
    files, hw = _check_args(name, {"python": model}, "fp32", static_hw, output_scale, max_batch_size, instances,
                            kind, False)
    for value, what in ((max_queue_delay_us, "max_queue_delay_us"), (timeout_us, "timeout_us"), (threads, "threads")):
        _check_int(value, what, 0)
    _check_int(max_pixels, "max_pixels", 1)
    params = {f"nst_{k}": str(v) for k, v in (meta or {}).items()
              if k in _META_KEYS and v is not None and not isinstance(v, (dict, list, tuple))}
    params.update(_python_params("stylizer", str(files["python"].resolve()), n_styles=n_styles,
                                 output_scale=output_scale, max_pixels=max_pixels, memory_mb=memory_mb,
                                 threads=threads))
    if fallback is not None:
        params["nst_fallback"] = str(Path(fallback).resolve())
    text = _config(name, spec, io_dtype="fp32", hw=hw, output_scale=output_scale, max_batch_size=max_batch_size,
                   instances=instances, kind=kind, tensorrt_fp16=False, params=params, n_styles=n_styles,
                   max_queue_delay_us=max_queue_delay_us, timeout_us=timeout_us, dynamic_batching=dynamic_batching)
    model_dir = Path(repo_dir) / name
    try:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        with open(MODEL_PY, "rb") as src, atomic_write(model_dir / "1" / "model.py", "wb") as dst:
            shutil.copyfileobj(src, dst)
        with atomic_write(model_dir / "config.pbtxt", "w") as fh:
            fh.write(text)
    except OSError as e:
        raise NSTError(f"cannot write the Triton model '{model_dir}': {e.strerror or e}") from None
    return str(model_dir)
