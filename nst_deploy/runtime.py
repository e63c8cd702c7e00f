"""The unified runtime: ``Stylizer.load(path)`` runs an exported (or trained) network.

Backends, chosen from the file:

* ONNX (``.onnx``): onnxruntime, execution providers in the order TensorRT, CUDA, CPU as available
  (or ``providers``); external data must stay inside the model's folder;
* TorchScript (``model.pt`` written by ``nst-export``): loaded with ``torch.jit.load`` only after its
  sha256 matches the ``manifest.json`` beside it (TorchScript is code: never loaded unverified);
* a model file of ``nst train``: the eager network.

The metadata (architecture, style, input/output contract, precision) comes from the file itself.
Calls take a PIL image, an ``HxWx3`` uint8 array or an RGB float tensor ``(N, 3, H, W)`` in ``[0, 1]``
and return the same kind; inputs are checked before inference. A Stylizer may be called from several
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
import threading
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
                precision the file was not exported in.
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
        try:
            meta = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
        except ValueError:
            raise NSTError(f"ONNX model '{path}' has malformed metadata") from None
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1:
            raise NSTError(f"ONNX model '{path}' does not take one NCHW image (is it a tiles graph?)")
        iname, oname = inputs[0].name, outputs[0].name
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
            module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"TorchScript '{path}' cannot be loaded: {str(e).strip().splitlines()[0][:160]}") from None
        try:
            meta = json.loads(extra["nst_meta.json"] or "{}")
        except ValueError:
            raise NSTError(f"TorchScript '{path}' has malformed metadata") from None
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
    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a float ``(N, 3, H, W)`` batch, whole; float32 on the CPU."""
        with torch.inference_mode():
            return self._run(x.to(self.device, self.dtype)).float().cpu()

    def __call__(self, image: Any):
        """Stylize ``image`` (PIL, ``HxWx3`` uint8 array or ``(N, 3, H, W)`` tensor); returns the same kind."""
        kind, (n, h, w), data = self._source(image)
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
            raise NSTError(f"image is {w}x{h}: sides must be between {MIN_SIDE} and {MAX_SIDE} pixels")
        if self.static and (h, w) != self.static:
            raise NSTError(f"this model was exported for {self.static[1]}x{self.static[0]} images (--static); "
                           f"got {w}x{h}")
        s = self.scale
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
        stats = stats_of(thumb)
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

        tiling.run_tiled(source, sink, plan, lambda t: run_tile(t, stats), w * s, self.progress)
        if kind == "tensor":
            return out.to(image.device, image.dtype)
        if kind == "numpy":
            return out
        from PIL import Image

        return Image.fromarray(out)
