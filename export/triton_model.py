"""The Triton Python-backend model of an nst-deploy style network: copied as ``1/model.py`` into a model
repository by ``nst serve`` and by ``nst-export --triton-repo ... --triton-backend python``.

This file is self-contained (numpy, and onnxruntime or nst-deploy, nothing of the package at import) so
that it runs in any Triton server with the Python backend, the NGC container included. Its config's
``parameters`` say what to run:

- ``nst_runtime``: ``stylizer`` (``nst_deploy.Stylizer.load(nst_model)``: any model file nst-deploy loads,
  tiled when large) or ``onnxruntime`` (the ONNX file ``nst_model`` beside this file, run by ONNX Runtime);
- ``nst_max_pixels``: the most pixels (images x height x width) one request may carry;
- ``nst_min_side`` / ``nst_max_side``: the image side limits; ``nst_n_styles``: a multistyle network's style
  count (its optional ``style`` input); ``nst_memory_mb``, ``nst_threads``: per-instance budgets;
  ``nst_fallback``: the runtime's model file for images that need tiles (see ``Stylizer.load``).

Requests carry ``image``, float32 ``[N, 3, H, W]`` RGB in [0, 1] (and for a multistyle network optionally
``style``, float32 ``[N, n_styles]``: each image's style weights); the response ``stylized`` is float32
``[N, 3, H*s, W*s]`` in [0, 1]. Triton itself refuses a wrong data type, rank or channel count. This model
refuses, with one line each and without stopping the others of a batch: NaN/Inf, a side out of limits
(an empty image included), more pixels than the limit, a malformed style vector. Requests of one image size
that Triton's dynamic batcher hands over together run as one batch (per style, for the runtime).
"""

import contextlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT, OUTPUT, STYLE = "image", "stylized", "style"


def _error(message: str, code: str = "INVALID_ARG"):
    """A TritonError with an error code where this backend version has codes (HTTP 400 for INVALID_ARG)."""
    value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)


#: numpy 2 changed the buffer protocol this backend's ``as_numpy()`` and ``Tensor(name, array)`` rely on
#: (they misread or refuse arrays under it), while its DLPack path breaks the stub under numpy 1.
_DLPACK = int(np.__version__.split(".")[0]) >= 2


def _array(tensor) -> np.ndarray:
    """A request tensor as a numpy array."""
    return np.from_dlpack(tensor) if _DLPACK else tensor.as_numpy()


def _tensor(name: str, array: np.ndarray):
    """A response tensor from a float32 array."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return pb_utils.Tensor.from_dlpack(name, array) if _DLPACK else pb_utils.Tensor(name, array)


def _param(config: dict, key: str, default=None):
    value = (config.get("parameters") or {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


class BadRequest(ValueError):
    """A request this model refuses (its message goes back to the client)."""


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config.get("name", "model")
        self.runtime = _param(config, "nst_runtime", "onnxruntime")
        self.max_pixels = int(_param(config, "nst_max_pixels", 3840 * 2160))
        self.min_side = int(_param(config, "nst_min_side", 8))
        self.max_side = int(_param(config, "nst_max_side", 16384))
        self.n_styles = int(_param(config, "nst_n_styles", 0))
        self.scale = int(_param(config, "nst_output_scale", 1))
        threads = int(_param(config, "nst_threads", 0))
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else "cpu"
        model = _param(config, "nst_model", "model.onnx")
        if not os.path.isabs(model):
            model = os.path.join(args["model_repository"], args["model_version"], model)
        if self.runtime == "stylizer":
            if threads:  # each instance is its own process: the runtime reads its thread count from here
                os.environ["OMP_NUM_THREADS"] = str(threads)
            from nst_deploy import Stylizer

            memory = _param(config, "nst_memory_mb")
            self.stylizer = Stylizer.load(model, device=device, memory_mb=float(memory) if memory else None,
                                          fallback=_param(config, "nst_fallback"))
            self.session = None
        elif self.runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            providers = ["CPUExecutionProvider"]
            if gpu:
                providers = [("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}),
                             *providers]
            self.session = ort.InferenceSession(model, options, providers=providers)
            # an fp16 export (nst-export --fp16) takes and gives float16: the wire stays float32
            self.half = self.session.get_inputs()[0].type == "tensor(float16)"
            self.stylizer = None
        else:
            raise ValueError(f"nst_runtime must be 'stylizer' or 'onnxruntime', not {self.runtime!r}")
        self._metrics()

    def _metrics(self) -> None:
        """Counters on the server's Prometheus endpoint beside Triton's own, which count a request this model
        answers with an error as a success: refused requests by reason, and images stylized."""
        self.refused = self.images = None
        family = getattr(pb_utils, "MetricFamily", None)
        if family is None:  # a backend older than custom metrics (Triton 23.05)
            return
        # the families must outlive their metrics: kept here, released after them in finalize()
        self.families = (
            family(name="nst_requests_refused", description="Requests an nst-deploy model refused, by reason",
                   kind=family.COUNTER),
            family(name="nst_images_stylized", description="Images an nst-deploy model stylized",
                   kind=family.COUNTER))
        self.refused = {r: self.families[0].Metric(labels={"model": self.name, "reason": r})
                        for r in ("bad_input", "failed", "cancelled")}
        self.images = self.families[1].Metric(labels={"model": self.name})

    def _count(self, what: str, n: int = 1) -> None:
        if self.refused is None:
            return
        with contextlib.suppress(Exception):  # a metric never fails a request
            (self.images if what == "images" else self.refused[what]).increment(n)

    # -- one request's inputs, checked
    def _inputs(self, request) -> tuple[np.ndarray, np.ndarray | None]:
        x = _array(pb_utils.get_input_tensor_by_name(request, INPUT))
        if x.ndim != 4 or x.shape[1] != 3:
            raise BadRequest(f"'{INPUT}' must be [N, 3, H, W], got {list(x.shape)}")
        n, _, h, w = x.shape
        if min(h, w) < self.min_side or max(h, w) > self.max_side:
            empty = " (it has no pixels)" if min(h, w) == 0 else ""
            raise BadRequest(f"image is {w}x{h}{empty}: sides must be between {self.min_side} and "
                             f"{self.max_side} pixels")
        if n * h * w > self.max_pixels:
            raise BadRequest(f"the request holds {n} image(s) of {w}x{h}, {n * h * w} pixels: this server takes "
                             f"at most {self.max_pixels} pixels per request")
        if x.dtype != np.float32:
            raise BadRequest(f"'{INPUT}' must be FP32, got {x.dtype}")
        if not np.isfinite(x).all():
            raise BadRequest(f"'{INPUT}' has NaN or Inf values")
        style = None
        if self.n_styles:  # one weight vector per image, [N, n_styles]; style 0 when the request has none
            t = pb_utils.get_input_tensor_by_name(request, STYLE)
            if t is None:
                style = np.zeros((n, self.n_styles), np.float32)
                style[:, 0] = 1.0
            else:
                style = _array(t).astype(np.float32)
                if style.shape != (n, self.n_styles) or not np.isfinite(style).all() or (style < 0).any() \
                        or not (style.sum(1) > 0).all():
                    raise BadRequest(f"'{STYLE}' must be [N, {self.n_styles}]: per image, {self.n_styles} finite "
                                     f"weights >= 0 with a positive sum; got {list(style.shape)}")
                style = style / style.sum(1, keepdims=True)
        return x, style

    # -- running
    def _run(self, x: np.ndarray, style: np.ndarray | None) -> np.ndarray:
        """The network on ``x`` [N, 3, H, W] with ``style`` [N, n_styles] (or None): [N, 3, H*s, W*s]."""
        if self.stylizer is not None:
            if style is None:
                return self._stylize(x, None)
            rows, which = np.unique(style, axis=0, return_inverse=True)
            which = which.reshape(-1)
            if len(rows) == 1:
                return self._stylize(x, rows[0])
            y = np.empty((x.shape[0], 3, x.shape[2] * self.scale, x.shape[3] * self.scale), np.float32)
            for k, row in enumerate(rows):  # the runtime takes one style per call
                y[which == k] = self._stylize(x[which == k], row)
            return y
        feeds = {INPUT: x.astype(np.float16) if self.half else x}
        if style is not None:
            feeds[STYLE] = style
        y = self.session.run([OUTPUT], feeds)[0].astype(np.float32, copy=False)
        if y.shape != (x.shape[0], 3, x.shape[2] * self.scale, x.shape[3] * self.scale):
            raise RuntimeError(f"the network returned {list(y.shape)} for {list(x.shape)}")
        if not np.isfinite(y).all():
            raise RuntimeError("the network returned NaN or Inf values")
        return np.clip(y, 0.0, 1.0)

    def _stylize(self, x: np.ndarray, style: np.ndarray | None) -> np.ndarray:
        kwargs = {} if style is None else {"style": [float(v) for v in style]}
        n, _, h, w = x.shape
        k = n  # a batch the runtime would tile runs in chunks that it does not: batching must not cost tiles
        while k > 1 and self.stylizer.needs_tiles(k, h, w):
            k = (k + 1) // 2
        parts = [self.stylizer(np.ascontiguousarray(x[i:i + k].transpose(0, 2, 3, 1)), **kwargs)
                 for i in range(0, n, k)]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).transpose(0, 3, 1, 2)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict = {}  # requests of one image size and style run as one batch
        for i, request in enumerate(requests):
            cancelled = getattr(request, "is_cancelled", None)
            if cancelled is not None and cancelled():  # the client went away while it waited
                responses[i] = pb_utils.InferenceResponse(error=_error("request cancelled", "CANCELLED"))
                self._count("cancelled")
                continue
            try:
                x, style = self._inputs(request)
            except BadRequest as e:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(e)))
                self._count("bad_input")
                continue
            groups.setdefault(x.shape[1:], []).append((i, x, style))
        for items in groups.values():
            xs = items[0][1] if len(items) == 1 else np.concatenate([x for _, x, _ in items])
            styles = None if items[0][2] is None else np.concatenate([s for _, _, s in items])
            try:
                ys = self._run(xs, styles)
            except Exception as e:  # noqa: BLE001 - the model's failure is the client's error line
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                bad = type(e).__name__ == "NSTError"  # the runtime refusing this input (e.g. a static size)
                for i, _, _ in items:
                    responses[i] = pb_utils.InferenceResponse(
                        error=_error(f"{self.name}: {message}", "INVALID_ARG" if bad else "INTERNAL"))
                self._count("bad_input" if bad else "failed", len(items))
                continue
            self._count("images", xs.shape[0])
            start = 0
            for i, x, _ in items:
                n = x.shape[0]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[_tensor(OUTPUT, ys[start:start + n])])
                start += n
        return responses

    def finalize(self):
        self.stylizer = self.session = None
        self.refused = self.images = None
        self.families = None
