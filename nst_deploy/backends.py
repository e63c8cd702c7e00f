"""The runtime's backends: one class per model format behind :class:`nst_deploy.Stylizer`.

Each backend loads and checks its file and offers the same small interface: ``run(x)`` (the network on
a float ``(N, 3, H, W)`` batch, whole), ``tiling_info()`` (what tiling needs: receptive-field radius,
instance-norm channels, memory per pixel) and ``stats_runners()`` (instance-norm statistics of a
thumbnail, and a tile run with given statistics). A new format (a quantized export, a served model) is
a new class here, not new branches in the Stylizer.

* :class:`OnnxBackend`: onnxruntime, execution providers TensorRT, CUDA, CPU as available (or the
  caller's), inputs and outputs bound in place (IO binding); tiles through the export's
  ``model.tiles.onnx``; external data must stay inside the model's folder; the graph is checked against
  what ``nst-export`` writes.
* :class:`TorchScriptBackend`: ``model.pt`` of ``nst-export``, loaded with ``torch.jit.load`` only after
  its sha256 matches the ``manifest.json`` beside it (TorchScript is code: never loaded unverified).
* :class:`EagerBackend`: a model file of ``nst train``, the network itself.

Importing this module does not import torch, nor does loading and running an ONNX model on numpy
arrays (:meth:`Backend.run_array`); the torch formats, tensors and tiling import it when used.
"""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .contract import (
    MAX_SIDE,
    MIN_SIDE,
    ONNX_INPUT,
    ONNX_OUTPUT,
    ONNX_STYLE,
    PRECISION_NAMES,
    half_precision,
    style_count,
)
from .devices import cache_dir, cpu_threads, gpu_present
from .errors import NSTError
from .fsutil import sha256_file

__all__ = ["Backend", "EagerBackend", "OnnxBackend", "TorchScriptBackend", "brief_error", "open_backend",
           "provider_options"]


def onnx_device(name: str) -> str:
    """The execution-provider choice for a device name: ``cpu``, ``cuda`` or ``auto`` (``cuda:N`` is
    ``cuda``)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name.split(":")[0]
    if name in ("mps", "xpu"):
        raise NSTError(f"device '{name}' cannot run an ONNX model here: use auto, cpu or cuda")
    raise NSTError(f"unknown device '{name}'")


def _onnx_providers(device: str, providers) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise NSTError(f"execution providers {', '.join(missing)} are not available here "
                           f"(available: {', '.join(available)})")
        return list(providers)
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    if device == "cuda" and not any(p in available for p in gpu):
        raise NSTError("device 'cuda' was asked for, but onnxruntime has no CUDA execution provider here "
                       "(install onnxruntime-gpu)")
    order = ["CPUExecutionProvider"] if device == "cpu" or (device == "auto" and not gpu_present()) else \
        [*gpu, "CPUExecutionProvider"]
    return [p for p in order if p in available] or ["CPUExecutionProvider"]


def provider_options(providers: list[str], fp16: bool = False) -> list[tuple[str, dict]]:
    """``(provider, options)`` for an ONNX Runtime session. TensorRT keeps its engines and timing cache in
    :func:`~nst_deploy.devices.cache_dir` ``("tensorrt")`` (an engine takes seconds to minutes to build; the
    cache is keyed by the model and the shapes, so a restart or another process reuses it) and builds fp16
    kernels for ``fp16`` (a model exported with ``nst-export --fp16``); CUDA searches cuDNN's convolution
    algorithms once per shape (the runtime sees few shapes: what they run at is what counts)."""
    out = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            cache = cache_dir("tensorrt")
            out.append((p, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                            "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache,
                            "trt_fp16_enable": "True" if fp16 else "False"}))
        elif p == "CUDAExecutionProvider":
            out.append((p, {"cudnn_conv_algo_search": "EXHAUSTIVE"}))
        else:
            out.append((p, {}))
    return out


def _graph_tensors(graph):
    """Every tensor of an ONNX graph that may hold data: initializers (sparse ones too) and node
    attributes, subgraphs included (what onnx's external-data helper walks, by public fields only)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _check_external_data(path: Path) -> None:
    """Refuse ONNX external-data references that leave the model's folder."""
    # Every external-data reference holds the key "location" as plain bytes: a file without them has
    # none, and is not parsed here (importing onnx alone takes about as long as a small model's run).
    with open(path, "rb") as fh:
        if b"location" not in fh.read():
            return
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    root = path.parent.resolve()
    for t in _graph_tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise NSTError(f"ONNX model '{path}': external data '{location}' points outside its folder")


def _bound_run(sess, feeds: dict, outputs: dict) -> None:
    """Run ``sess`` with inputs and outputs bound in place (CPU or CUDA torch tensors: no copies)."""
    import torch

    def _ort_type(dtype):
        return {torch.float32: np.float32, torch.float16: np.float16}[dtype]

    binding = sess.io_binding()
    feeds = {name: t.contiguous() for name, t in feeds.items()}  # kept alive until the run returns
    for t in list(feeds.values()) + list(outputs.values()):
        if t.is_cuda:  # torch's queued work on these buffers must be done before ONNX Runtime's stream reads them
            torch.cuda.synchronize(t.device)
            break
    for name, t in feeds.items():
        binding.bind_input(name, t.device.type, t.device.index or 0, _ort_type(t.dtype), tuple(t.shape), t.data_ptr())
    for name, t in outputs.items():
        binding.bind_output(name, t.device.type, t.device.index or 0, _ort_type(t.dtype), tuple(t.shape),
                            t.data_ptr())
    sess.run_with_iobinding(binding)


_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def brief_error(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, without onnxruntime's status prefix, at most ``limit`` characters."""
    text = str(e)
    if "Traceback of TorchScript" in text:  # the interpreter's trace first; the error itself is the last line
        text = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    text = " ".join(_ORT_PREFIX.sub("", text).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dim(d) -> str:
    return str(d) if isinstance(d, int) else "a dynamic number of" if d else "an unknown number of"


def _hw(h, w) -> str:
    """Width x height of a graph's dimensions, ``any`` for a dynamic one."""
    return "x".join(str(d) if isinstance(d, int) else "any" for d in (w, h))


def _check_onnx_signature(path: Path, sess, meta: dict) -> None:
    """Refuse an ONNX graph whose inputs and outputs are not those ``nst-export`` writes (see export/core.py):
    one input ``image`` and one output ``stylized``, rank 4, 3 channels, a dynamic batch, the element type of
    the metadata's precision, height and width fixed exactly when the metadata has a static size."""

    def refuse(why: str):
        raise NSTError(f"ONNX model '{path}' is not an nst-export style network: {why}")

    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    n_styles = style_count(meta)
    if n_styles:  # a multistyle network's second input: the style vector, (N, n_styles) float32
        if len(inputs) != 2 or inputs[1].name != ONNX_STYLE or list(inputs[1].shape or [])[1:] != [n_styles] \
                or inputs[1].type != "tensor(float)":
            refuse(f"its metadata says a multistyle network of {n_styles} styles, but it does not take a float "
                   f"'{ONNX_STYLE}' input of shape (N, {n_styles}) after '{ONNX_INPUT}'")
        inputs = inputs[:1]
    if len(inputs) != 1 or len(outputs) != 1:
        refuse(f"it has {len(inputs)} input(s) and {len(outputs)} output(s), "
               f"not one input '{ONNX_INPUT}' and one output '{ONNX_OUTPUT}'")
    want_type = "tensor(float16)" if meta["precision"] == "fp16-io" else "tensor(float)"
    for role, arg, name in (("input", inputs[0], ONNX_INPUT), ("output", outputs[0], ONNX_OUTPUT)):
        if arg.name != name:
            refuse(f"its {role} is named '{arg.name}', not '{name}'")
        shape = list(arg.shape or [])
        if len(shape) != 4:
            refuse(f"its {role} '{name}' has rank {len(shape)}, not 4 (N, 3, H, W)")
        if shape[1] != 3:
            refuse(f"its {role} '{name}' has {_dim(shape[1])} channel{'' if shape[1] == 1 else 's'}, not 3 (RGB)")
        if isinstance(shape[0], int):
            refuse(f"its {role} '{name}' has a fixed batch of {shape[0]} (nst-export keeps the batch dynamic)")
        if arg.type != want_type:
            refuse(f"its {role} '{name}' is {arg.type}, but its metadata's precision {meta['precision']} "
                   f"needs {want_type}")
    ih, iw = inputs[0].shape[2:]
    oh, ow = outputs[0].shape[2:]
    static, scale = meta.get("static"), meta["output_scale"]
    if static:
        if [ih, iw] != list(static):
            refuse(f"its metadata says static {static[1]}x{static[0]} images, but its input '{ONNX_INPUT}' "
                   f"takes {_hw(ih, iw)} images")
        if any(isinstance(o, int) and o != i * scale for o, i in ((oh, ih), (ow, iw))):
            refuse(f"it turns {iw}x{ih} images into {ow}x{oh}, not {iw * scale}x{ih * scale} "
                   f"(output scale {scale})")
    elif any(isinstance(d, int) for d in (ih, iw, oh, ow)):
        refuse(f"it takes or gives a fixed height or width (input {_hw(ih, iw)}, output {_hw(oh, ow)}), "
               "but its metadata has no static size")


def _check_meta(path: Path, meta: dict, kind: str) -> dict:
    """The fields the runtime relies on (``precision``, ``output_scale``, ``static``), checked and normalized."""

    def malformed(why: str):
        raise NSTError(f"{kind} '{path}' has malformed metadata: {why}")

    if not isinstance(meta, dict):
        malformed("not a JSON object")
    precision = meta.get("precision") or "fp32"
    if precision not in PRECISION_NAMES:
        malformed(f"unknown precision {precision!r}")
    scale = meta.get("output_scale") or 1
    if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 16:
        malformed(f"output_scale {scale!r} is not a whole number between 1 and 16")
    static = meta.get("static") or None
    if static is not None and not (isinstance(static, list) and len(static) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and MIN_SIDE <= v <= MAX_SIDE for v in static)):
        malformed(f"static {static!r} is not [height, width] between {MIN_SIDE} and {MAX_SIDE}")
    return dict(meta, precision=precision, output_scale=scale, static=static)


def _half_io(path: Path, meta: dict, precision: str | None) -> bool:
    """Whether an exported file takes half-precision inputs, refusing a ``precision`` it was not exported in."""
    have = meta["precision"]
    if precision is not None and (precision == "fp32") != (have == "fp32"):
        flag = "--fp16" if precision == "fp16" else "no --fp16"
        raise NSTError(f"'{path}' was exported in {have}; for {precision}, export it with nst-export {flag}")
    return have == "fp16-io"


def _torch_dtype(half: bool):
    import torch

    return torch.float16 if half else torch.float32


def _session(path: Path, device: str, providers, arena: bool = True, fp16: bool = False, threads: int | None = None):
    import onnxruntime as ort

    try:
        _check_external_data(path)
    except NSTError:
        raise
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"ONNX model '{path}' cannot be read: {str(e).strip().splitlines()[0][:160]}") from None
    opts = ort.SessionOptions()
    # the CPU arena keeps (and grows by powers of two) what it ever held: off for tiles, which must
    # stay within the memory budget
    opts.enable_cpu_mem_arena = arena
    threads = threads or cpu_threads()
    if threads:
        opts.intra_op_num_threads = threads
    names = _onnx_providers(device, providers)
    if "TensorrtExecutionProvider" in names:
        os.makedirs(cache_dir("tensorrt"), exist_ok=True)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=provider_options(names, fp16))
    except Exception as e:  # noqa: BLE001
        raise NSTError(f"ONNX model '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None


class Backend:
    """A loaded network of one format (see the module docstring).

    Attributes:
        name: ``"onnx"``, ``"torchscript"`` or ``"eager"``.
        meta: the file's metadata, checked (``precision``, ``output_scale``, ``static``, ...).
        device: where inputs go, a ``torch.device`` (an ONNX session on the CPU provider: the CPU).
        dtype: the input dtype the network takes, a torch dtype.
        path: the model file.
    """

    name = "model"
    kind = "model"  # how messages name the file
    #: whether :meth:`run_array` runs without torch (the Stylizer then runs images as arrays)
    arrays = False

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.scale = int(meta.get("output_scale") or 1)
        self._lock = threading.Lock()
        #: styles of a multistyle network (its second input, the style vector), else 0
        self.n_styles = style_count(meta)

    def bound(self, weights: np.ndarray) -> Backend:
        """A view of this backend that runs a multistyle network with the style vector ``weights``."""
        raise NSTError(f"{self.label} cannot take a style vector in this format")

    def memory_device(self):
        """What :func:`nst_deploy.devices.available_memory` should ask about for this backend."""
        return self.device

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.path}'"

    def run(self, x):
        """The network on a float tensor ``(N, 3, H, W)`` (any device and float dtype), whole."""
        raise NotImplementedError

    def run_array(self, x: np.ndarray) -> np.ndarray:
        """The network on a float32 array ``(N, 3, H, W)``, whole: a float32 array back."""
        import torch

        with torch.inference_mode():
            return self.run(torch.from_numpy(x)).float().cpu().numpy()

    def tiling_info(self) -> dict:
        """Receptive-field ``radius``, ``norm_channels``, ``multiple``, ``peak_floats_per_pixel``."""
        info = self.meta.get("tiling")
        if info and info.get("norm_channels") is not None and info.get("radius") is not None:
            return info
        raise NSTError(f"'{self.path}' has no tiling information: export it again with this nst-export")

    def stats_runners(self):
        """``(thumbnail -> instance-norm statistics, (tile, statistics) -> output)``."""
        raise NotImplementedError


class OnnxBackend(Backend):
    """An ``nst-export`` ONNX file through onnxruntime."""

    name, kind = "onnx", "ONNX model"
    arrays = True

    def __init__(self, path: Path, device: str = "auto", providers=None, precision: str | None = None,
                 threads: int | None = None):
        device = onnx_device(device)
        self.threads = threads  # intra-op threads of each session (None: cpu_threads())
        sess = _session(path, device, providers, threads=threads)
        raw = sess.get_modelmeta().custom_metadata_map
        if "format" not in raw:
            raise NSTError(f"ONNX model '{path}' is not an nst-export style network: it has no nst-export "
                           "metadata (export the model with nst-export)")
        try:
            meta = {k: json.loads(v) for k, v in raw.items()}
        except ValueError:
            raise NSTError(f"ONNX model '{path}' has malformed metadata") from None
        if meta["format"] == "onnx_tiles":
            raise NSTError(f"ONNX model '{path}' is the tiles graph of an export: load the model.onnx beside it")
        if meta["format"] != "onnx":
            raise NSTError(f"ONNX model '{path}' is not an nst-export style network: its metadata says format "
                           f"{meta['format']!r}, not 'onnx'")
        meta = _check_meta(path, meta, "ONNX model")
        _check_onnx_signature(path, sess, meta)
        self.half_io = _half_io(path, meta, precision)
        used = sess.get_providers()
        if used[0] == "TensorrtExecutionProvider" and half_precision(meta):
            # an fp16 export: TensorRT builds fp16 kernels
            sess = _session(path, device, providers, fp16=True, threads=threads)
        meta["providers"] = used
        self.on_gpu = used[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        super().__init__(path, meta)
        self.session, self.providers, self.device_name = sess, providers, device
        self._tiles_sess = None
        self.style_feed: np.ndarray | None = None  # a bound view's style vector (multistyle)

    def bound(self, weights: np.ndarray) -> Backend:
        import copy

        view = copy.copy(self)  # the sessions, the lock and the metadata are shared
        view.style_feed = np.asarray(weights, np.float32)
        return view

    def _style(self, n: int, like=None):
        """The style input for a batch of ``n`` (a tensor on ``like``'s device, else an array), or None."""
        if self.style_feed is None:
            return None
        w = np.tile(self.style_feed, (n, 1))
        if like is None:
            return w
        import torch

        return torch.from_numpy(w).to(like.device)

    @property
    def device(self):
        """``cuda`` when the session runs on a GPU provider and torch can reach the GPU, else ``cpu``."""
        import torch

        return torch.device("cuda" if self.on_gpu and torch.cuda.is_available() else "cpu")

    @property
    def dtype(self):
        return _torch_dtype(self.half_io)

    def memory_device(self):
        return self.device if self.on_gpu else "cpu"

    def run_array(self, x: np.ndarray) -> np.ndarray:  # numpy in and out: no torch
        feeds = {ONNX_INPUT: x.astype(np.float16 if self.half_io else np.float32)}
        if self.style_feed is not None:
            feeds[ONNX_STYLE] = self._style(x.shape[0])
        y = self.session.run([ONNX_OUTPUT], feeds)[0]
        return y.astype(np.float32, copy=False)

    def run(self, x):  # a binding per call: sessions run concurrently
        import torch

        x = x.to(self.device, self.dtype)
        s = self.scale
        y = torch.empty(x.shape[0], 3, x.shape[2] * s, x.shape[3] * s, dtype=self.dtype, device=self.device)
        feeds = {ONNX_INPUT: x}
        if self.style_feed is not None:
            feeds[ONNX_STYLE] = self._style(x.shape[0], x)
        _bound_run(self.session, feeds, {ONNX_OUTPUT: y})
        return y

    def tiles_session(self):
        """The session of ``model.tiles.onnx`` beside the model (opened on first use)."""
        with self._lock:
            if self._tiles_sess is None:
                tpath = self.path.with_name(self.path.stem + ".tiles.onnx")
                if not tpath.is_file():
                    raise NSTError(f"this image needs tiling, but '{tpath.name}' is not beside '{self.path.name}': "
                                   "export with nst-export (without --static)")
                self._tiles_sess = _session(tpath, self.device_name, self.providers, arena=False,
                                            fp16=half_precision(self.meta), threads=self.threads)
            return self._tiles_sess

    def stats_runners(self):
        import torch

        sess = self.tiles_session()
        n_stats = 2 * sum(self.tiling_info()["norm_channels"])
        dev, dtype, scale = self.device, self.dtype, self.scale

        def run(x, stats):
            x = x.to(dev, dtype)
            n = x.shape[0]
            mix = torch.ones(1, device=dev) if stats is not None else torch.zeros(1, device=dev)
            stats = torch.zeros(n, n_stats, device=dev) if stats is None else stats.to(dev, torch.float32)
            y = torch.empty(n, 3, x.shape[2] * scale, x.shape[3] * scale, dtype=dtype, device=dev)
            own = torch.empty(n, n_stats, device=dev)
            feeds = {ONNX_INPUT: x, "stats": stats, "mix": mix}
            if self.style_feed is not None:
                feeds[ONNX_STYLE] = self._style(n, x)
            _bound_run(sess, feeds, {ONNX_OUTPUT: y, "stats_out": own})
            return y, own

        return (lambda x: run(x, None)[1]), (lambda x, st: run(x, st)[0])


class _StyleBound:
    """``module(x, style)`` as ``f(x)``, the style vector expanded to the batch (what tiling calls)."""

    def __init__(self, module, weights):
        self.module, self.weights = module, weights

    def __call__(self, x):
        return self.module(x, self.weights.to(x.device)[None].expand(x.shape[0], -1).contiguous())


class ModuleBackend(Backend):
    """A torch module (TorchScript or eager): tiled through :class:`nst_deploy.tiling.NormStats`."""

    def __init__(self, path: Path, meta: dict, device, dtype, module):
        super().__init__(path, meta)
        self.device, self.dtype, self.module = device, dtype, module

    def run(self, x):
        return self.module(x.to(self.device, self.dtype))

    def bound(self, weights: np.ndarray) -> Backend:
        import copy

        import torch

        view = copy.copy(self)  # the lock and the metadata (tiling information) are shared
        view.module = _StyleBound(self.module, torch.from_numpy(weights).to(self.device))
        return view

    def tiling_info(self) -> dict:
        from . import tiling

        with self._lock:  # measured once, on first need, for files that do not record it
            if not (self.meta.get("tiling") or {}).get("radius"):
                self.meta["tiling"] = tiling.probe(lambda x: self.module(x.to(self.device, self.dtype)),
                                                   multiple=4, device="cpu")
        return self.meta["tiling"]

    def stats_runners(self):
        import torch

        from . import tiling

        module, dev, dtype = self.module, self.device, self.dtype

        def stats_of(x):
            rec = tiling.NormStats()
            with torch.inference_mode(), rec:
                module(x.to(dev, dtype))
            return rec.flat()

        def tile(x, stats):
            with torch.inference_mode(), tiling.NormStats(given=stats):
                return module(x.to(dev, dtype))

        return stats_of, tile


class TorchScriptBackend(ModuleBackend):
    """``model.pt`` of ``nst-export``, verified against its manifest before it is loaded."""

    name, kind = "torchscript", "TorchScript"

    def __init__(self, path: Path, device, precision: str | None = None):
        import torch

        manifest_path = path.parent / "manifest.json"
        if not manifest_path.is_file():
            raise NSTError(f"refusing TorchScript '{path}': no manifest.json beside it to verify it against "
                           "(TorchScript is code; export with nst-export)")
        try:
            manifest = json.loads(manifest_path.read_text())
            entry = manifest["artifacts"]["torchscript"]
        except (OSError, ValueError, KeyError, TypeError):
            raise NSTError(f"refusing TorchScript '{path}': '{manifest_path}' has no torchscript entry") from None
        if entry.get("file") != path.name or entry.get("sha256") != sha256_file(path):
            raise NSTError(f"refusing TorchScript '{path}': its sha256 does not match '{manifest_path}' "
                           "(the file was changed after export)")
        extra = {"nst_meta.json": ""}
        try:
            with warnings.catch_warnings():  # torch's deprecation notice is no news to a user of the file
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"TorchScript '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None
        try:
            meta = json.loads(extra["nst_meta.json"] or "{}")
        except ValueError:
            raise NSTError(f"TorchScript '{path}' has malformed metadata") from None
        meta = _check_meta(path, meta, "TorchScript")
        if precision == "fp16" and not half_precision(meta):
            module.half()  # a float32 scripted module casts like an eager one
            meta["precision"], dtype = "fp16", torch.float16
        else:
            dtype = _torch_dtype(_half_io(path, meta, precision))
        module.eval()
        super().__init__(path, meta, device, dtype, module)


class EagerBackend(ModuleBackend):
    """A model file of ``nst train``: the network itself."""

    name, kind = "eager", "model"

    def __init__(self, path: Path, device, precision: str | None = None):
        import torch

        from .nets.io import load_model

        dtype = torch.float16 if precision == "fp16" else torch.float32
        net, meta = load_model(path, device=device, dtype=dtype)
        # the network says its output scale (a model file's metadata need not)
        scale = net.output_scale(net.levels) if hasattr(net, "output_scale") else 1
        super().__init__(path, dict(meta, precision=precision or "fp32", output_scale=scale), device, dtype, net)


def open_backend(path: Path, device: str = "auto", providers=None, precision: str | None = None,
                 threads: int | None = None) -> Backend:
    """The backend for ``path`` on ``device`` (a name), by what the file is: ONNX by its suffix; a zip
    archive holding code is TorchScript, any other an ``nst train`` model file. ``threads``: the intra-op
    threads of an ONNX Runtime session (torch's threads are the process's own)."""
    if path.suffix.lower() == ".onnx":
        return OnnxBackend(path, device, providers, precision, threads)
    from .devices import resolve_device

    device = resolve_device(device)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] != b"PK":
        raise NSTError(f"model '{path}' cannot be read: it is neither ONNX nor a PyTorch archive")
    # Tell a TorchScript archive (it holds code/) from a model file by listing the zip: torch.load
    # would hand a TorchScript archive to torch.jit.load, running it before any verification.
    try:
        with zipfile.ZipFile(path) as zf:
            scripted = any("/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise NSTError(f"model '{path}' cannot be read: {e}") from None
    if scripted:
        return TorchScriptBackend(path, device, precision)
    return EagerBackend(path, device, precision)
