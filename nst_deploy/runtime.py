"""The unified runtime: ``Stylizer.load(path)`` runs an exported (or trained) network.

The file decides the backend (:mod:`nst_deploy.backends`: ONNX Runtime for ``.onnx``, verified
TorchScript for ``nst-export``'s ``model.pt``, the eager network for an ``nst train`` model file), and
its metadata (architecture, style, input/output contract, precision) comes from the file itself.
Calls take a PIL image, an ``HxWx3`` uint8 array or an RGB float tensor ``(N, 3, H, W)`` in ``[0, 1]``
and return the same kind; inputs are checked before inference, and outputs after it (a finite
``(N, 3, H, W)`` batch for an ``(N, 3, H, W)`` input, ``H`` and ``W`` times the output scale). A
Stylizer may be called from several threads; the first call's setup cost is paid at load by a
warm-up run.

Images whose working memory would exceed ``memory_mb`` run in tiles (:mod:`nst_deploy.tiling`):
instance-norm statistics come from a thumbnail (long side ``stats_size``), tiles overlap by more
than twice the network's receptive-field radius and are blended with weights that sum to one, so the
tiled result equals the untiled one computed with the thumbnail's statistics up to float rounding.
ONNX exports tile through their ``model.tiles.onnx``; TorchScript and eager models directly.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, brief_error, open_backend
from .contract import MAX_SIDE, MIN_SIDE, all_finite, half_precision
from .controls import apply_controls, check_strength, style_weights
from .devices import available_memory, is_out_of_memory
from .errors import NSTError

__all__ = ["Stylizer"]

#: Share of the memory available at load that a call may use by default.
MEMORY_SHARE = 0.5


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch: if it is not loaded, nothing is one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _upscale(photo: np.ndarray, scale: int) -> np.ndarray:
    """An ``(H, W, 3)`` float photo at ``scale`` times its size (bicubic), for the controls of an upscaling
    network."""
    if scale == 1:
        return photo
    from PIL import Image

    h, w = photo.shape[:2]
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(photo[..., c])).resize(
        (w * scale, h * scale), Image.Resampling.BICUBIC)) for c in range(3)], -1).clip(0.0, 1.0)


def default_memory_mb(device) -> float:
    """Half the memory available now: free GPU memory on CUDA, ``MemAvailable`` on the CPU (else 4096)."""
    have = available_memory(device)
    return MEMORY_SHARE * have / 2**20 if have is not None else 4096.0


#: Floats per input pixel assumed for models that do not record theirs.
DEFAULT_FLOATS_PER_PIXEL = 256.0


class Stylizer:
    """A loaded style network, ready to run (see the module docstring).

    Attributes:
        memory_mb: working-memory budget of one call; larger images are tiled.
        stats_size: long side of the thumbnail that gives the instance-norm statistics when tiling.
        tile: tile side in input pixels (``None``: the largest that fits ``memory_mb``).
        progress: ``progress(done, total)`` called after each tile, or ``None``.
        strength: 0 (the photo) to 1 (the network's output, the default); see :mod:`nst_deploy.controls`.
        preserve_color: keep the photo's colours, with the output's luminance (default False).
        style: a multistyle network's style: an index (default 0) or a style's name, ``{index or name:
            weight}`` or a weight vector (see :func:`nst_deploy.controls.style_weights`); ``n_styles`` says
            how many it has (0: one style).
    """

    def __init__(self, engine: Backend, memory_mb: float | None = None):
        self.engine = engine  # the format's backend: run, run_array, tiling_info, stats_runners
        self.backend = engine.name
        self.meta = engine.meta
        self.memory_mb = float(memory_mb if memory_mb is not None else default_memory_mb(engine.memory_device()))
        self.stats_size = 1024
        self.tile: int | None = None
        self.progress = None
        self.strength = 1.0
        self.preserve_color = False
        self.style = 0
        self.n_styles = engine.n_styles
        self.scale = engine.scale
        self.static = tuple(self.meta["static"]) if self.meta.get("static") else None
        self.fallback: tuple | None = None  # (path, device, precision, threads) of a model that tiles; see load()
        self._swap = threading.Lock()

    @property
    def device(self):
        """The ``torch.device`` inputs go to (for ONNX, asking imports torch)."""
        return self.engine.device

    @property
    def dtype(self):
        """The torch dtype the model takes."""
        return self.engine.dtype

    # -- loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", providers: list[str] | None = None,
             precision: str | None = None, memory_mb: float | None = None, warmup: bool = True,
             fallback: str | os.PathLike | None = None, threads: int | None = None) -> Stylizer:
        """Load an ONNX file, a verified TorchScript file or an ``nst train`` model file.

        Args:
            path: ``model.onnx``, ``model.pt`` (TorchScript, with its ``manifest.json``) or a model file.
            device: ``auto``, ``cpu``, ``cuda[:N]`` (for ONNX: picks the execution providers).
            providers: ONNX Runtime execution providers, in order (default: TensorRT, CUDA, CPU as available).
            precision: ``None`` (the file's; on the CPU, the ``model.int8.onnx`` of an nst-export folder when
                ``path`` is its ``model.onnx`` and it has one), ``fp32``, ``fp16`` or ``int8`` (that file, which must
                exist; images that need tiles run on ``model.onnx``). Eager models and float32
                TorchScript cast to fp16; ONNX files must have been exported in it (``nst-export --fp16``).
            memory_mb: working-memory budget of one call; larger images run in tiles (default: half
                the memory available at load, on the GPU for CUDA).
            warmup: run once on a small image at load, so the first real call does not pay the setup.
            fallback: a model file of the same network that can run in tiles, for a ``path`` that cannot (the
                ONNX copy of a bundled model, which has no tiles graph): loaded in its place by the first
                call whose images need tiles.
            threads: CPU threads of each ONNX Runtime call (default: ``OMP_NUM_THREADS``, else ONNX Runtime's
                own, one per core); e.g. 1 where two calls run side by side on two cores.

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
        if precision not in (None, "fp32", "fp16", "int8"):
            raise NSTError(f"precision must be fp32, fp16 or int8, not '{precision}'")
        if precision == "int8" or (precision is None and path.suffix == ".onnx" and fallback is None):
            from .devices import gpu_present
            from .models import int8_beside

            int8 = int8_beside(path)
            if precision == "int8" and int8 is None:
                raise NSTError(f"'{path}' has no int8 model beside it: export with nst-export --int8")
            on_cpu = device == "cpu" or (device == "auto" and not gpu_present() and not providers)
            if int8 is not None and (precision == "int8" or on_cpu):
                path, fallback, precision = int8, path, None
        if memory_mb is not None and not memory_mb > 0:
            raise NSTError(f"memory_mb must be positive, got {memory_mb}")
        if threads is not None and threads < 1:
            raise NSTError(f"threads must be at least 1, got {threads}")
        st = cls(open_backend(path, device, providers, precision, threads), memory_mb=memory_mb)
        if fallback is not None:
            if not Path(fallback).is_file():
                raise NSTError(f"model '{fallback}' does not exist")
            st.fallback = (Path(fallback), device, precision, threads)
        if warmup:
            h, w = st.static or (64, 64)
            st._infer_array(np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32), st.engine_for(None))
        return st

    # -- inputs
    def _source(self, image) -> tuple[str, tuple[int, int, int], object]:
        """``(kind, (N, H, W), data)``: data is an ``HxWx3`` uint8 array or a float ``(N, 3, H, W)`` tensor."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):  # a file, read as the rest of the API reads images
            from .imageio import read_rgb

            arr = (read_rgb(image) * 255.0 + 0.5).astype(np.uint8)
            return "pil", (1, arr.shape[0], arr.shape[1]), arr
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            arr = np.asarray(image)
            return "pil", (1, arr.shape[0], arr.shape[1]), arr
        if isinstance(image, np.ndarray) and image.ndim == 4:  # a batch of same-size images, NxHxWx3
            if image.shape[3] != 3 or image.dtype not in (np.uint8, np.float32):
                raise NSTError(f"expected an NxHxWx3 uint8 or float32 batch, got {image.shape} {image.dtype}")
            if image.dtype == np.float32 and not all_finite(image):
                raise NSTError("the input array has NaN or Inf values")
            return "batch", (image.shape[0], image.shape[1], image.shape[2]), image
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.float32):
                raise NSTError(f"expected an HxWx3 uint8 or float32 array, got {image.shape} {image.dtype}")
            if image.dtype == np.float32:  # in [0, 1]: checked as tensors are
                if not all_finite(image):
                    raise NSTError("the input array has NaN or Inf values")
                return "float", (1, image.shape[0], image.shape[1]), image
            return "numpy", (1, image.shape[0], image.shape[1]), image
        if _is_tensor(image):
            if image.dim() != 4 or image.shape[1] != 3:
                raise NSTError(f"expected an RGB tensor (N, 3, H, W), got {tuple(image.shape)}")
            if not image.is_floating_point():
                raise NSTError(f"expected a floating-point tensor in [0, 1], got {image.dtype}")
            if not all_finite(image):
                raise NSTError("the input tensor has NaN or Inf values")
            return "tensor", (image.shape[0], image.shape[2], image.shape[3]), image.detach()
        raise NSTError(f"expected an image path, PIL image, numpy array or tensor, not {type(image).__name__}")

    @property
    def style_names(self) -> list:
        """A multistyle network's style names, in the order of its style vector (its metadata's; may be empty)."""
        return [st.get("name") for st in self.meta.get("styles") or []]

    # -- memory and tiling
    def _floats_per_pixel(self) -> float:
        t = self.meta.get("tiling") or {}
        return float(t.get("peak_floats_per_pixel") or DEFAULT_FLOATS_PER_PIXEL)

    def working_bytes(self, n: int, h: int, w: int) -> int:
        """Estimated working memory of running ``n`` images of ``h x w`` whole."""
        per = 2 if half_precision(self.meta) else 4
        return int(n * h * w * self._floats_per_pixel() * per)

    def needs_tiles(self, n: int, h: int, w: int) -> bool:
        """Whether ``n`` images of ``h x w`` run in tiles: their working memory and output exceed ``memory_mb``."""
        s = self.scale
        return self.working_bytes(n, h, w) + 3 * 4 * n * h * w * s * s > self.memory_mb * 2**20

    def tile_side(self, n: int, w: int, info: dict) -> int:
        """The tile side, in input pixels, for ``n`` images of width ``w`` within ``memory_mb``."""
        m = int(info.get("multiple", 4))
        budget = self.memory_mb * 2**20
        overlap = self.overlap(info)
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
    def overlap(info: dict) -> int:
        """The tiles' overlap, in input pixels: more than twice the receptive-field radius."""
        m = int(info.get("multiple", 4))
        return -(-(2 * int(info["radius"]) + 16) // m) * m

    # -- running
    def _guard(self, fn, x, check: bool = True):
        """``fn(x)`` with the backend's failures as one :class:`NSTError` (the original kept as ``__cause__``;
        running out of memory is left as it is) and, with ``check``, its output checked to be a finite float
        ``(N, 3, H * scale, W * scale)`` tensor (an array for an array ``x``) for an ``(N, 3, H, W)`` input."""
        n, _, h, w = x.shape
        try:
            y = fn(x)
        except NSTError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime, TorchScript interpreter or eager failures alike
            if is_out_of_memory(e):
                raise
            raise NSTError(f"{self.engine.label} failed on a {n}x3x{h}x{w} input (is it a style network of "
                           f"nst-export?): {brief_error(e)}") from e
        if not check:
            return y
        want = (n, 3, h * self.scale, w * self.scale)
        array = isinstance(x, np.ndarray)
        if not (isinstance(y, np.ndarray) if array else _is_tensor(y)):
            raise NSTError(f"{self.engine.label} returned {type(y).__name__} for a {n}x3x{h}x{w} input, "
                           f"not a {'n array' if array else ' tensor'} of shape {want}")
        floating = np.issubdtype(y.dtype, np.floating) if array else y.is_floating_point()
        if tuple(y.shape) != want or not floating:
            raise NSTError(f"{self.engine.label} returned a {y.dtype} {'array' if array else 'tensor'} of shape "
                           f"{tuple(y.shape)} for a {n}x3x{h}x{w} input; a style network returns a float "
                           f"{'array' if array else 'tensor'} of shape {want}")
        if not all_finite(y):
            raise NSTError(f"{self.engine.label} returned NaN or Inf values for a {n}x3x{h}x{w} input")
        return y

    def engine_for(self, style):
        """The backend to run a call on: for a multistyle network, a view bound to the call's style vector."""
        if not self.n_styles:
            if style is not None:
                raise NSTError(f"{self.engine.label} has one style: it takes no style choice")
            return self.engine
        return self.engine.bound(style_weights(self.style if style is None else style, self.n_styles,
                                               self.style_names))

    def _infer(self, x, engine: Backend):
        """The network on a float tensor ``(N, 3, H, W)``, whole, its output checked; float32 on the CPU."""
        import torch

        with torch.inference_mode():
            return self._guard(engine.run, x).float().cpu()

    def _infer_array(self, x: np.ndarray, engine: Backend):
        """The network on a float32 array ``(N, 3, H, W)``, whole, its output checked: an array from a backend
        that runs arrays without torch (ONNX), else through the tensor path (a float32 CPU tensor)."""
        if engine.arrays:
            return self._guard(engine.run_array, x)
        return self._infer(sys.modules["torch"].from_numpy(x), engine)  # a torch format: torch is loaded

    def _controls(self, strength, preserve_color):
        """The call's controls, checked: None when they leave the output as it is, else a function
        ``(output, photo) -> output`` on float ``(N, 3, H*s, W*s)`` and ``(N, 3, H, W)`` arrays or tensors."""
        s = check_strength(self.strength if strength is None else strength)
        keep = bool(self.preserve_color if preserve_color is None else preserve_color)
        if s == 1.0 and not keep:
            return None
        scale = self.scale

        def run(y, x):
            tensor = _is_tensor(y)
            yn = y.detach().float().cpu().numpy() if tensor else np.asarray(y, np.float32)
            xn = x.detach().float().cpu().numpy() if _is_tensor(x) else np.asarray(x, np.float32)
            out = np.empty_like(yn)
            for i in range(yn.shape[0]):
                photo = _upscale(xn[i].transpose(1, 2, 0), scale)
                out[i] = apply_controls(yn[i].transpose(1, 2, 0), photo, s, keep).transpose(2, 0, 1)
            return sys.modules["torch"].from_numpy(out) if tensor else out

        return run

    def __call__(self, image: Any, *, style=None, strength: float | None = None, preserve_color: bool | None = None):
        """Stylize ``image`` (a file path, PIL image, ``HxWx3`` uint8 or float32 array, ``NxHxWx3`` array batch of
        one size, or ``(N, 3, H, W)`` tensor); returns the same kind (a PIL image for a path). ``style``,
        ``strength`` and ``preserve_color`` override the attributes of the same names for this call.

        A tensor gives a tensor of the same dtype and device, ``(N, 3, H * s, W * s)`` for the model's
        ``output_scale`` ``s`` (1 but for multimodal networks). An empty batch (``N == 0``) of a valid
        image size returns an empty tensor of that shape without running the network, so that a server
        can pass on whatever batch it collected.

        Raises:
            NSTError: an input of the wrong kind, rank, dtype or channel count, with NaN or Inf values,
                with a side under MIN_SIDE (8) or over MAX_SIDE (16384) pixels, or not the size of a static export; the
                model failing on it or returning something else than the stylized batch.
        """
        controls = self._controls(strength, preserve_color)
        engine = self.engine_for(style)
        kind, (n, h, w), data = self._source(image)
        if min(h, w) < MIN_SIDE or max(h, w) > MAX_SIDE:
            empty = " (it has no pixels)" if min(h, w) == 0 else ""
            raise NSTError(f"image is {w}x{h}{empty}: sides must be between {MIN_SIDE} and {MAX_SIDE} pixels")
        if self.static and (h, w) != self.static:
            raise NSTError(f"this model was exported for {self.static[1]}x{self.static[0]} images (--static); "
                           f"got {w}x{h}")
        if self.fallback is not None and self.needs_tiles(n, h, w):
            self._load_fallback()
            engine = self.engine_for(style)
        s = self.scale
        if n == 0:  # only a batch can be empty
            if kind == "batch":
                return np.empty((0, h * s, w * s, 3), image.dtype)
            return image.new_empty((0, 3, h * s, w * s))
        if kind == "batch":
            return self._batch(data, engine, controls)
        if not self.needs_tiles(n, h, w):
            if kind == "tensor":
                y = self._infer(data.float(), engine)
                return (y if controls is None else controls(y, data)).to(image.device, image.dtype)
            x = data.transpose(2, 0, 1)[None].astype(np.float32)
            if kind != "float":
                x /= np.float32(255.0)
            y = self._infer_array(x, engine)
            return self._to_image((y if controls is None else controls(y, x))[0], kind)
        return self._tiled(kind, n, h, w, data, image, engine, controls)

    def _load_fallback(self) -> None:
        """Run on the ``fallback`` model from now on (once, whichever thread gets here first)."""
        with self._swap:
            if self.fallback is None:
                return
            path, device, precision, threads = self.fallback
            engine = open_backend(path, device, None, precision, threads)
            self.engine, self.backend, self.meta = engine, engine.name, engine.meta
            self.fallback = None

    def _batch(self, data: np.ndarray, engine: Backend, controls):
        """An NxHxWx3 array batch, the same dtype back: whole through the array path, or tiled (as tensors)."""
        n, h, w = data.shape[:3]
        x = np.ascontiguousarray(data.transpose(0, 3, 1, 2), dtype=np.float32)
        if data.dtype == np.uint8:
            x /= np.float32(255.0)
        if self.needs_tiles(n, h, w):
            import torch

            xt = torch.from_numpy(x)
            y = self._tiled("tensor", n, h, w, xt, xt, engine, controls).numpy()
        else:
            y = self._infer_array(x, engine)
            y = np.asarray(y if controls is None else controls(y, x))
        y = np.clip(y, 0.0, 1.0).transpose(0, 2, 3, 1)
        if data.dtype == np.uint8:
            return (y * 255.0 + 0.5).astype(np.uint8)
        return np.ascontiguousarray(y, dtype=np.float32)

    @staticmethod
    def _to_image(y, kind: str):
        """``(3, H, W)`` float (array or CPU tensor) in ``[0, 1]`` as the caller's kind: an array or PIL image."""
        y = np.asarray(y)
        if kind == "float":
            return np.ascontiguousarray(np.clip(y, 0.0, 1.0).transpose(1, 2, 0), dtype=np.float32)
        arr = (np.clip(y, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
        if kind == "numpy":
            return arr
        from PIL import Image

        return Image.fromarray(arr)

    def thumbnail_shape(self, n: int, h: int, w: int) -> tuple[int, int]:
        """``(h, w)`` of the thumbnail whose statistics a tiled run uses: long side at most ``stats_size``,
        aspect kept, and small enough to run within ``memory_mb``."""
        from . import tiling

        th, tw = tiling.thumbnail_size(h, w, self.stats_size)
        fit = self.memory_mb * 2**20 / max(self.working_bytes(n, 1, 1), 1)
        if th * tw > fit:
            th, tw = tiling.thumbnail_size(h, w, int(max(th, tw) * math.sqrt(fit / (th * tw))))
        return th, tw

    def _tiled(self, kind: str, n: int, h: int, w: int, data, image, engine: Backend, controls=None):
        import torch

        from . import tiling

        info = engine.tiling_info()
        stats_of, run_tile = engine.stats_runners()
        s = self.scale
        tile = self.tile_side(n, w, info)
        th, tw = self.thumbnail_shape(n, h, w)
        if kind == "float":  # a float array runs as the tensor it is
            data = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1)))[None]
        if kind in ("tensor", "float"):
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
        plan = tiling.TilePlan(h, w, tile, self.overlap(info), int(info["radius"]), int(info.get("multiple", 4)), s)
        if kind in ("tensor", "float"):
            out = torch.empty(n, 3, h * s, w * s)

            def sink(r0, band):
                out[:, :, r0:r0 + band.shape[2]] = band
        else:
            out = np.empty((h * s, w * s, 3), np.uint8)

            def sink(r0, band):
                out[r0:r0 + band.shape[2]] = (band[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(
                    np.uint8)

        def tile(t):
            y = self._guard(lambda u: run_tile(u, stats), t)
            # the controls' statistics are local (a radius far under the overlap): per tile is exact
            return y if controls is None else controls(y.float(), t)

        tiling.run_tiled(source, sink, plan, tile, w * s, self.progress)
        if kind == "tensor":
            return out.to(image.device, image.dtype)
        if kind == "float":
            return self._to_image(out[0], kind)
        if kind == "numpy":
            return out
        from PIL import Image

        return Image.fromarray(out)
