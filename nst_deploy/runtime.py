"""The unified runtime: ``Stylizer.load(path)`` runs an exported (or trained) network.

Backends, chosen from the file:

* ONNX (``.onnx``): onnxruntime, execution providers in the order TensorRT, CUDA, CPU as available
  (or ``providers``); external data must stay inside the model's folder;
* TorchScript (``model.pt`` written by ``nst-export``): loaded with ``torch.jit.load`` only after its
  sha256 matches the ``manifest.json`` beside it (TorchScript is code: never loaded unverified);
* a model file of ``nst train``: the eager network.

The metadata (architecture, style, input/output contract, precision) comes from the file itself.
Calls take a PIL image, an ``HxWx3`` uint8 array or an RGB float tensor ``(N, 3, H, W)`` in ``[0, 1]``
and return the same kind; inputs are checked before inference, and outputs after it (a finite
``(N, 3, H, W)`` batch for an ``(N, 3, H, W)`` input, ``H`` and ``W`` times the output scale); ONNX
graphs are checked at load against what ``nst-export`` writes. A Stylizer may be called from several
threads. ONNX runs through IO binding (inputs and outputs bound in place, on the GPU for CUDA
providers); the first call's setup cost is paid at load by a warm-up run.

Images whose working memory would exceed ``memory_mb`` run in tiles (:mod:`nst_deploy.tiling`):
instance-norm statistics come from a thumbnail (long side ``stats_size``), tiles overlap by more
than twice the network's receptive-field radius and are blended with weights that sum to one, so the
tiled result equals the untiled one computed with the thumbnail's statistics up to float rounding.
ONNX exports tile through their ``model.tiles.onnx``; TorchScript and eager models directly.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import tiling
from .errors import NSTError
from .fsutil import sha256_file

__all__ = ["Stylizer"]

MAX_SIDE = 16384
MIN_SIDE = 8
#: Share of the memory available at load that a call may use by default.
MEMORY_SHARE = 0.5


def default_memory_mb(device: torch.device) -> float:
    """Half the memory available now: free GPU memory on CUDA, ``MemAvailable`` on the CPU (else 4096)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return MEMORY_SHARE * free / 2**20
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return MEMORY_SHARE * int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 4096.0


#: Floats per input pixel assumed for models that do not record theirs.
DEFAULT_FLOATS_PER_PIXEL = 256.0


def _onnx_providers(device: str, providers) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise NSTError(f"execution providers {', '.join(missing)} are not available here "
                           f"(available: {', '.join(available)})")
        return list(providers)
    order = ["CPUExecutionProvider"] if device == "cpu" else \
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in available] or ["CPUExecutionProvider"]


def _check_external_data(path: Path) -> None:
    """Refuse ONNX external-data references that leave the model's folder."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(path), load_external_data=False)
    root = path.parent.resolve()
    for t in _get_all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise NSTError(f"ONNX model '{path}': external data '{location}' points outside its folder")


def _ort_type(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16}[dtype]


def _bound_run(sess, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
    """Run ``sess`` with inputs and outputs bound in place (CPU or CUDA torch tensors: no copies)."""
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


#: What ``nst-export`` writes: one input ``image`` and one output ``stylized``, both ``(N, 3, H, W)``.
ONNX_INPUT, ONNX_OUTPUT = "image", "stylized"
PRECISION_NAMES = ("fp32", "fp16", "fp16-io")
_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def _brief(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, without onnxruntime's status prefix, at most ``limit`` characters."""
    text = str(e)
    if "Traceback of TorchScript" in text:  # the interpreter's trace first; the error itself is the last line
        text = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    text = " ".join(_ORT_PREFIX.sub("", text).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


_OUT_OF_MEMORY = re.compile(r"out of memory|alloc\w* memory|memory alloc|not enough memory", re.IGNORECASE)


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out (left to the caller: ``nst run`` turns it into advice)."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(e))))


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


class Stylizer:
    """A loaded style network, ready to run (see the module docstring).

    Attributes:
        memory_mb: working-memory budget of one call; larger images are tiled.
        stats_size: long side of the thumbnail that gives the instance-norm statistics when tiling.
        tile: tile side in input pixels (``None``: the largest that fits ``memory_mb``).
        progress: ``progress(done, total)`` called after each tile, or ``None``.
    """

    def __init__(self, backend: str, run, meta: dict, device: torch.device, module=None, path: Path | None = None,
                 providers: list[str] | None = None, dtype: torch.dtype = torch.float32,
                 memory_mb: float | None = None):
        self.backend = backend
        self._run = run
        self.meta = meta
        self.device = device
        self._module = module  # eager / TorchScript module (tiled through NormStats)
        self._path = path
        self._providers = providers
        self.dtype = dtype  # input dtype the model takes
        self.memory_mb = float(memory_mb if memory_mb is not None else default_memory_mb(device))
        self.stats_size = 1024
        self.tile: int | None = None
        self.progress = None
        self._lock = threading.Lock()
        self._tiles_sess = None
        self.scale = int(meta.get("output_scale") or 1)
        self.static = tuple(meta["static"]) if meta.get("static") else None

    # -- loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", providers: list[str] | None = None,
             precision: str | None = None, memory_mb: float | None = None, warmup: bool = True) -> Stylizer:
        """Load an ONNX file, a verified TorchScript file or an ``nst train`` model file.

        Args:
            path: ``model.onnx``, ``model.pt`` (TorchScript, with its ``manifest.json``) or a model file.
            device: ``auto``, ``cpu``, ``cuda[:N]`` (for ONNX: picks the execution providers).
            providers: ONNX Runtime execution providers, in order (default: TensorRT, CUDA, CPU as available).
            precision: ``None`` (the file's), ``fp32`` or ``fp16``. Eager models and float32
                TorchScript cast to fp16; ONNX files must have been exported in it (``nst-export --fp16``).
            memory_mb: working-memory budget of one call; larger images run in tiles (default: half
                the memory available at load, on the GPU for CUDA).
            warmup: run once on a small image at load, so the first real call does not pay the setup.

        Raises:
            NSTError: missing, truncated or malformed file; TorchScript not matching its manifest; a
                precision the file was not exported in; an ONNX graph that is not what nst-export writes
                (nst metadata, one input ``image`` and one output ``stylized``, ``(N, 3, H, W)`` of the
                precision's dtype, a dynamic batch, fixed height and width exactly for ``--static``); a
                model failing the warm-up or returning something else than a finite ``(N, 3, H, W)``
                batch (the backend's error as ``__cause__``).
        """
        path = Path(path)
        if not path.is_file():
            raise NSTError(f"model '{path}' does not exist")
        if precision not in (None, "fp32", "fp16"):
            raise NSTError(f"precision must be fp32 or fp16, not '{precision}'")
        if memory_mb is not None and not memory_mb > 0:
            raise NSTError(f"memory_mb must be positive, got {memory_mb}")
        from .optimize import _device

        dev = _device(device)
        if path.suffix.lower() == ".onnx":
            st = cls._load_onnx(path, dev, providers, precision, memory_mb)
        else:
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
                st = cls._load_torchscript(path, dev, precision, memory_mb)
            else:
                from .nets.io import load_model

                dtype = torch.float16 if precision == "fp16" else torch.float32
                net, meta = load_model(path, device=dev, dtype=dtype)
                meta = dict(meta, precision=precision or "fp32")
                st = cls("eager", net, meta, dev, module=net, path=path, dtype=dtype, memory_mb=memory_mb)
        if warmup:
            h, w = st.static or (64, 64)
            st._infer(torch.rand(1, 3, h, w))
        return st

    @staticmethod
    def _check_precision(path: Path, meta: dict, precision: str | None) -> torch.dtype:
        have = meta.get("precision") or "fp32"
        if precision is not None and (precision == "fp32") != (have == "fp32"):
            flag = "--fp16" if precision == "fp16" else "no --fp16"
            raise NSTError(f"'{path}' was exported in {have}; for {precision}, export it with nst-export {flag}")
        return torch.float16 if have == "fp16-io" else torch.float32

    @classmethod
    def _session(cls, path: Path, dev: torch.device, providers, arena: bool = True):
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
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=_onnx_providers(dev.type, providers))
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"ONNX model '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None

    @classmethod
    def _load_onnx(cls, path: Path, dev: torch.device, providers, precision, memory_mb) -> Stylizer:
        sess = cls._session(path, dev, providers)
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
        iname, oname = ONNX_INPUT, ONNX_OUTPUT
        dtype = cls._check_precision(path, meta, precision)
        used = sess.get_providers()
        meta["providers"] = used
        on_gpu = used[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and torch.cuda.is_available()
        run_dev = torch.device("cuda") if on_gpu else torch.device("cpu")
        scale = int(meta.get("output_scale") or 1)

        def run(x: torch.Tensor) -> torch.Tensor:  # a binding per call: sessions run concurrently
            x = x.to(run_dev, dtype)
            y = torch.empty(x.shape[0], 3, x.shape[2] * scale, x.shape[3] * scale, dtype=dtype, device=run_dev)
            _bound_run(sess, {iname: x}, {oname: y})
            return y

        return cls("onnx", run, meta, run_dev, path=path, providers=providers, dtype=dtype, memory_mb=memory_mb)

    @classmethod
    def _load_torchscript(cls, path: Path, dev: torch.device, precision, memory_mb) -> Stylizer:
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
                module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"TorchScript '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None
        try:
            meta = json.loads(extra["nst_meta.json"] or "{}")
        except ValueError:
            raise NSTError(f"TorchScript '{path}' has malformed metadata") from None
        meta = _check_meta(path, meta, "TorchScript")
        if precision == "fp16" and (meta.get("precision") or "fp32") == "fp32":
            module.half()  # a float32 scripted module casts like an eager one
            meta["precision"], dtype = "fp16", torch.float16
        else:
            dtype = cls._check_precision(path, meta, precision)
        module.eval()
        return cls("torchscript", module, meta, dev, module=module, path=path, dtype=dtype, memory_mb=memory_mb)

    # -- inputs
    def _source(self, image) -> tuple[str, tuple[int, int, int], object]:
        """``(kind, (N, H, W), data)``: data is an ``HxWx3`` uint8 array or a float ``(N, 3, H, W)`` tensor."""
        from PIL import Image

        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            arr = np.asarray(image)
            return "pil", (1, arr.shape[0], arr.shape[1]), arr
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise NSTError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
            return "numpy", (1, image.shape[0], image.shape[1]), image
        if isinstance(image, torch.Tensor):
            if image.dim() != 4 or image.shape[1] != 3:
                raise NSTError(f"expected an RGB tensor (N, 3, H, W), got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise NSTError(f"expected a floating-point tensor in [0, 1], got {image.dtype}")
            if not torch.isfinite(image).all():
                raise NSTError("the input tensor has NaN or Inf values")
            return "tensor", (image.shape[0], image.shape[2], image.shape[3]), image.detach()
        raise NSTError(f"expected a PIL image, numpy array or tensor, not {type(image).__name__}")

    # -- memory and tiling
    def _floats_per_pixel(self) -> float:
        t = self.meta.get("tiling") or {}
        return float(t.get("peak_floats_per_pixel") or DEFAULT_FLOATS_PER_PIXEL)

    def working_bytes(self, n: int, h: int, w: int) -> int:
        """Estimated working memory of running ``n`` images of ``h x w`` whole."""
        per = 2 if self.dtype == torch.float16 or (self.meta.get("precision") or "fp32") != "fp32" else 4
        return int(n * h * w * self._floats_per_pixel() * per)

    def _tiling_info(self) -> dict:
        info = self.meta.get("tiling")
        if info and info.get("norm_channels") is not None and info.get("radius") is not None:
            return info
        if self._module is None:
            raise NSTError(f"'{self._path}' has no tiling information: export it again with this nst-export")
        with self._lock:
            if not self.meta.get("tiling"):
                self.meta["tiling"] = tiling.probe(lambda x: self._module(x.to(self.device, self.dtype)),
                                                   multiple=4, device="cpu")
        return self.meta["tiling"]

    def _tiles_session(self):
        with self._lock:
            if self._tiles_sess is None:
                tpath = self._path.with_name(self._path.stem + ".tiles.onnx")
                if not tpath.is_file():
                    raise NSTError(f"this image needs tiling (memory_mb={self.memory_mb:g}), but '{tpath.name}' is "
                                   f"not beside '{self._path.name}': export with nst-export (without --static)")
                self._tiles_sess = self._session(tpath, self.device, self._providers, arena=False)
            return self._tiles_sess

    def _stats_runners(self):
        """``(thumbnail -> stats, (tile, stats) -> output)`` for the backend."""
        if self.backend == "onnx":
            sess = self._tiles_session()
            n_stats = 2 * sum(self._tiling_info()["norm_channels"])
            dev, dtype, scale = self.device, self.dtype, self.scale

            def run(x: torch.Tensor, stats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
                x = x.to(dev, dtype)
                n = x.shape[0]
                mix = torch.ones(1, device=dev) if stats is not None else torch.zeros(1, device=dev)
                stats = torch.zeros(n, n_stats, device=dev) if stats is None else stats.to(dev, torch.float32)
                y = torch.empty(n, 3, x.shape[2] * scale, x.shape[3] * scale, dtype=dtype, device=dev)
                own = torch.empty(n, n_stats, device=dev)
                _bound_run(sess, {"image": x, "stats": stats, "mix": mix}, {"stylized": y, "stats_out": own})
                return y, own

            return (lambda x: run(x, None)[1]), (lambda x, st: run(x, st)[0])
        module, dev, dtype = self._module, self.device, self.dtype

        def stats_of(x: torch.Tensor) -> torch.Tensor:
            rec = tiling.NormStats()
            with torch.inference_mode(), rec:
                module(x.to(dev, dtype))
            return rec.flat()

        def tile(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), tiling.NormStats(given=stats):
                return module(x.to(dev, dtype))

        return stats_of, tile

    def _tile_side(self, n: int, w: int, info: dict) -> int:
        m = int(info.get("multiple", 4))
        budget = self.memory_mb * 2**20
        overlap = self._overlap(info)
        band = 2 * 4 * n * 3 * self.scale * self.scale * w  # float band rows, per input row of tile height
        # a multiple of the stride, so that tiles sample the strided grid of the whole image
        t = (self.tile or math.isqrt(max(int(budget / max(self.working_bytes(n, 1, 1), 1)), 1))) // m * m
        while t > overlap + 2 * m and self.working_bytes(n, t, t) + band * t > budget:
            t -= m
        if t <= overlap + 2 * m:
            t = overlap + 3 * m
            need = (self.working_bytes(n, t, t) + band * t) / 2**20
            raise NSTError(f"memory_mb={self.memory_mb:g} is too small to tile this image with this model "
                           f"(about {need:.0f} MB needed)")
        return t

    @staticmethod
    def _overlap(info: dict) -> int:
        m = int(info.get("multiple", 4))
        return -(-(2 * int(info["radius"]) + 16) // m) * m

    # -- running
    def _label(self) -> str:
        kind = {"onnx": "ONNX model", "torchscript": "TorchScript"}.get(self.backend, "model")
        return f"{kind} '{self._path}'" if self._path is not None else f"the {self.backend} model"

    def _guard(self, fn, x: torch.Tensor, check: bool = True):
        """``fn(x)`` with the backend's failures as one :class:`NSTError` (the original kept as ``__cause__``;
        running out of memory is left as it is) and, with ``check``, its output checked to be a finite float
        ``(N, 3, H * scale, W * scale)`` tensor for an ``(N, 3, H, W)`` input ``x``."""
        n, _, h, w = x.shape
        try:
            y = fn(x)
        except NSTError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime, TorchScript interpreter or eager failures alike
            if _out_of_memory(e):
                raise
            raise NSTError(f"{self._label()} failed on a {n}x3x{h}x{w} input (is it a style network of "
                           f"nst-export?): {_brief(e)}") from e
        if not check:
            return y
        want = (n, 3, h * self.scale, w * self.scale)
        if not isinstance(y, torch.Tensor):
            raise NSTError(f"{self._label()} returned {type(y).__name__} for a {n}x3x{h}x{w} input, "
                           f"not a tensor of shape {want}")
        if tuple(y.shape) != want or not y.is_floating_point():
            raise NSTError(f"{self._label()} returned a {y.dtype} tensor of shape {tuple(y.shape)} for a "
                           f"{n}x3x{h}x{w} input; a style network returns a float tensor of shape {want}")
        if not torch.isfinite(y).all():
            raise NSTError(f"{self._label()} returned NaN or Inf values for a {n}x3x{h}x{w} input")
        return y

    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a float ``(N, 3, H, W)`` batch, whole, its output checked; float32 on the CPU."""
        with torch.inference_mode():
            return self._guard(lambda t: self._run(t.to(self.device, self.dtype)), x).float().cpu()

    def __call__(self, image: Any):
        """Stylize ``image`` (PIL, ``HxWx3`` uint8 array or ``(N, 3, H, W)`` tensor); returns the same kind.

        A tensor gives a tensor of the same dtype and device, ``(N, 3, H * s, W * s)`` for the model's
        ``output_scale`` ``s`` (1 but for multimodal networks). An empty batch (``N == 0``) of a valid
        image size returns an empty tensor of that shape without running the network, so that a server
        can pass on whatever batch it collected.

        Raises:
            NSTError: an input of the wrong kind, rank, dtype or channel count, with NaN or Inf values,
                with a side under 8 or over 16384 pixels, or not the size of a static export; the
                model failing on it or returning something else than the stylized batch.
        """
        kind, (n, h, w), data = self._source(image)
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
            empty = " (it has no pixels)" if min(h, w) == 0 else ""
            raise NSTError(f"image is {w}x{h}{empty}: sides must be between {MIN_SIDE} and {MAX_SIDE} pixels")
        if self.static and (h, w) != self.static:
            raise NSTError(f"this model was exported for {self.static[1]}x{self.static[0]} images (--static); "
                           f"got {w}x{h}")
        s = self.scale
        if n == 0:  # only a tensor batch can be empty
            return image.new_empty((0, 3, h * s, w * s))
        if self.working_bytes(n, h, w) + 3 * 4 * n * h * w * s * s <= self.memory_mb * 2**20:
            x = data if kind == "tensor" else torch.from_numpy(data.copy()).permute(2, 0, 1)[None]
            y = self._infer(x.float() / 255.0 if kind != "tensor" else x.float())
            if kind == "tensor":
                return y.to(image.device, image.dtype)
            return self._to_image(y[0], kind)
        return self._tiled(kind, n, h, w, data, image)

    @staticmethod
    def _to_image(y: torch.Tensor, kind: str):
        arr = (y.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        if kind == "numpy":
            return arr
        from PIL import Image

        return Image.fromarray(arr)

    def thumbnail_shape(self, n: int, h: int, w: int) -> tuple[int, int]:
        """``(h, w)`` of the thumbnail whose statistics a tiled run uses: long side at most ``stats_size``,
        aspect kept, and small enough to run within ``memory_mb``."""
        th, tw = tiling.thumbnail_size(h, w, self.stats_size)
        fit = self.memory_mb * 2**20 / max(self.working_bytes(n, 1, 1), 1)
        if th * tw > fit:
            th, tw = tiling.thumbnail_size(h, w, int(max(th, tw) * math.sqrt(fit / (th * tw))))
        return th, tw

    def _tiled(self, kind: str, n: int, h: int, w: int, data, image):
        info = self._tiling_info()
        stats_of, run_tile = self._stats_runners()
        s = self.scale
        tile = self._tile_side(n, w, info)
        th, tw = self.thumbnail_shape(n, h, w)
        if kind == "tensor":
            x = data.float()
            thumb = tiling.thumbnail(x.cpu(), (th, tw))

            def source(y0, y1, x0, x1):
                return x[:, :, y0:y1, x0:x1]
        else:
            from PIL import Image

            thumb = Image.fromarray(data).resize((tw, th), Image.Resampling.BOX) if (th, tw) != (h, w) else None
            thumb = torch.from_numpy(np.array(thumb if thumb is not None else data)).permute(2, 0, 1)[None].float()
            thumb = thumb / 255.0
            source = tiling.uint8_source(data)
        stats = self._guard(stats_of, thumb, check=False)
        plan = tiling.TilePlan(h, w, tile, self._overlap(info), int(info["radius"]), int(info.get("multiple", 4)), s)
        if kind == "tensor":
            out = torch.empty(n, 3, h * s, w * s)

            def sink(r0, band):
                out[:, :, r0:r0 + band.shape[2]] = band
        else:
            out = np.empty((h * s, w * s, 3), np.uint8)

            def sink(r0, band):
                out[r0:r0 + band.shape[2]] = (band[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(
                    np.uint8)

        tiling.run_tiled(source, sink, plan, lambda t: self._guard(lambda u: run_tile(u, stats), t), w * s,
                         self.progress)
        if kind == "tensor":
            return out.to(image.device, image.dtype)
        if kind == "numpy":
            return out
        from PIL import Image

        return Image.fromarray(out)
