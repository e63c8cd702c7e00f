"""The many-images job on a Ray cluster (the ``ray`` extra): ``nst run MODEL INPUTS... -o OUT --ray [ADDRESS]``.

The same job as :mod:`nst_deploy.jobs` (the same inputs, outputs and files), as a Ray Data pipeline:
the list of (input, output) pairs is a dataset; ``map_batches`` runs a stateful actor per worker that
loads the model once (a :class:`~nst_deploy.runtime.Stylizer`; on a GPU when the actor is given one,
``num_gpus``), reads its batch's images, stylizes images of one size together and writes each output
atomically, returning one record per image. A worker that dies is restarted and its batch run again:
outputs are written whole or not at all, and a rerun writes the same bytes to the same file, so
nothing is lost or duplicated. With no address a local cluster is started (``num_cpus``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ImageError, NSTError

__all__ = ["StylizeActor", "import_ray", "run_on_ray"]


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise NSTError("the Ray pipeline needs Ray Data: pip install 'nst-deploy[ray]'") from None
    return ray


class StylizeActor:
    """One per Ray worker: the model loaded once; ``__call__`` takes a batch of ``src``/``out`` columns."""

    def __init__(self, model: str, device: str = "cpu", size: int | None = None, quality: int = 95,
                 controls: dict | None = None, memory_mb: float | None = None, fallback: str | None = None):
        from .runtime import Stylizer

        self.stylizer = Stylizer.load(model, device=device, memory_mb=memory_mb, fallback=fallback)
        self.size, self.quality = size, quality
        self.controls = dict(controls or {})
        self.pid = os.getpid()

    def __call__(self, batch: dict) -> dict:
        from .imageio import read_rgb, write_image

        srcs, outs = [str(s) for s in batch["src"]], [str(o) for o in batch["out"]]
        status, errors = ["written"] * len(srcs), [""] * len(srcs)
        images: dict[int, np.ndarray] = {}
        for i, src in enumerate(srcs):
            try:
                images[i] = read_rgb(src, size=self.size)
            except (ImageError, NSTError, OSError) as e:
                status[i], errors[i] = "failed", str(e)
        by_shape: dict[tuple, list[int]] = {}
        for i, x in images.items():
            by_shape.setdefault(x.shape, []).append(i)
        for idx in by_shape.values():
            try:
                ys = self.stylizer(np.stack([images[i] for i in idx]), **self.controls)
            except NSTError as e:
                for i in idx:
                    status[i], errors[i] = "failed", str(e)
                continue
            for i, y in zip(idx, ys, strict=True):
                try:
                    Path(outs[i]).parent.mkdir(parents=True, exist_ok=True)
                    write_image(y, outs[i], quality=self.quality)
                except (ImageError, OSError) as e:
                    status[i], errors[i] = "failed", str(e)
        return {"src": np.array(srcs, dtype=object), "out": np.array(outs, dtype=object),
                "status": np.array(status, dtype=object), "error": np.array(errors, dtype=object),
                "pid": np.full(len(srcs), self.pid)}


def run_on_ray(model: str | os.PathLike, pairs: list[tuple[str, str]], *, address: str | None = None,
               workers: int = 2, batch: int = 4, device: str = "cpu", num_gpus: float = 0.0,
               size: int | None = None, quality: int = 95, controls: dict | None = None,
               num_cpus: int | None = None, memory_mb: float | None = None, fallback: str | None = None) -> list[dict]:
    """Stylize every ``(input, output)`` pair on Ray; returns one record per pair (``src``, ``out``,
    ``status``, ``error``, ``pid`` of the worker), in input order. ``num_gpus`` > 0: GPU actors, each given
    at most that much of a GPU and no more than the cluster's GPUs divided among ``workers``."""
    ray = import_ray()
    if workers < 1 or batch < 1:
        raise NSTError("--workers and --batch must be at least 1")
    started = False
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": num_cpus or workers, "include_dashboard": False}
        try:
            ray.init(log_to_driver=False, configure_logging=False, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise NSTError(f"cannot reach the Ray cluster{f' at {address}' if address else ''}: "
                           f"{str(e).splitlines()[0][:160]}") from None
        started = True
    import logging

    quiet = [logging.getLogger(n) for n in ("ray.data", "ray")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:  # Ray Data's execution notices: the command prints its own summary
            lg.setLevel(logging.ERROR)
        ds = ray.data.from_items([{"src": s, "out": o, "n": i} for i, (s, o) in enumerate(pairs)],
                                 override_num_blocks=max(1, min(len(pairs), 4 * workers)))
        gpu = num_gpus > 0
        if gpu:  # the cluster's GPUs shared among the workers, at most one each
            have = float(ray.cluster_resources().get("GPU", 0))
            if have <= 0:
                raise NSTError("the run is on CUDA but the Ray cluster has no GPUs: use --device cpu")
            num_gpus = min(num_gpus, have / workers)
        out = ds.map_batches(
            StylizeActor, fn_constructor_kwargs={"model": str(model), "device": "cuda" if gpu else device,
                                                 "size": size, "quality": quality, "controls": controls,
                                                 "memory_mb": memory_mb, "fallback": fallback},
            # an actor that dies is restarted and its batch retried (Ray Data's defaults for actor pools)
            batch_size=batch, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            num_gpus=num_gpus or None, batch_format="numpy")
        rows = out.take_all()
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
        if started:
            ray.shutdown()
    order = {s: i for i, (s, _) in enumerate(pairs)}
    recs = [{"src": str(r["src"]), "out": str(r["out"]), "status": str(r["status"]), "error": str(r["error"]),
             "pid": int(r["pid"])} for r in rows]
    recs.sort(key=lambda r: order.get(r["src"], len(order)))
    return recs
