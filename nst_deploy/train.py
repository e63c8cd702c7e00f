"""Training of the feed-forward style networks with the perceptual loss.

One network learns one style. Every step takes a batch of photographs (random square crops of a
random scale, flipped at random, resized to the training size), runs the network, and minimizes

``L = alpha sum_l w_l L_content^l + beta L_style + tv R_TV``

on the loss network, the same terms as the per-image optimization (:mod:`nst_deploy.losses`), with
the content term taken per element (``w_l`` divided by the layer's ``C H W``) so that its weight
does not depend on the training size. The Multimodal network is trained with the hierarchical loss
``L_H = sum_k lambda_k L^k``: level ``k`` is compared with the photograph and the style image at
that level's size.

Data order and augmentation are a pure function of ``(seed, sample number)``: a resumed run sees
the same images as an uninterrupted one, and with ``torchrun`` each of the ``W`` processes takes its
``batch / W`` share of the same global batch (DistributedDataParallel averages the gradients, so
the update equals the single-process one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from .controls import style_weights
from .devices import deterministic, resolve_device
from .distill import DistillLoss, distill_lr
from .errors import NSTError
from .fsutil import atomic_write, check_folder, load_torch, sha256_file
from .images import load_image, save_image, source_size
from .interrupts import DeferredInterrupt
from .losses import LossTerms, PerceptualLoss, balanced_style_layers
from .lossnets import load_lossnet
from .nets import create, list_models
from .nets.io import load_model, save_model
from .photos import IMAGE_SUFFIXES, PhotoDataset, scan_photos, step_batches  # noqa: F401 (re-exported)
from .presets import parse_layers

__all__ = ["TrainOptions", "Trainer", "PhotoDataset", "train"]

CHECKPOINT_FORMAT = "nst-deploy-train-checkpoint"
CHECKPOINT_VERSION = 1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Options that do not change what is learned: a run may be resumed with other values of these.
RUN_CONTROL = ("steps", "device", "deterministic", "workers", "checkpoint_every", "sample_every", "log_every",
               "workdir")


#: The smallest side the painting is taken at by default. Measured (docs/feed-forward.md): at 128-px
#: crops, a painting at 384 px instead of 128 lowered both the judged style and content ratios.
MIN_STYLE_SIDE = 384
#: The default style weights: the plain Gram terms, and the balanced ones (--balance-style), whose sum over
#: relu1_1..relu5_1 is a few units on a photograph (the Starry Night sweep picked 6e4; docs/feed-forward.md).
STYLE_WEIGHT, BALANCED_STYLE_WEIGHT = 5e-6, 6e4


@dataclass
class TrainOptions:
    """Every option of ``nst train`` (see ``nst train --help``)."""

    style: str | list[str] = ""
    data: str = ""
    arch: str = "johnson"
    width: float = 1.0
    levels: int = 3
    size: int = 256
    style_size: int | None = None
    batch: int = 4
    steps: int = 2000
    lr: float = 1e-3
    content_layers: str = "relu2_2"
    style_layers: str = "relu1_2,relu2_2,relu3_3,relu4_3"
    content_weight: float = 1.0
    style_weight: float | None = None  # see beta()
    balance_style: bool = False
    tv_weight: float = 1e4
    level_weights: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25])
    min_crop: float = 0.35
    net: str = "vgg19"
    weights: str | None = None
    pooling: str = "max"
    precision: str = "auto"
    device: str = "auto"
    deterministic: bool = False
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 200
    sample_every: int = 200
    log_every: int = 10
    workdir: str | None = None
    base: str | None = None
    init: str | None = None
    init_style: str | None = None
    teacher: str | None = None
    distill_steps: int = 0
    distill_size: int | None = None

    def styles(self) -> list[str]:
        """The style images: one, or several for the multistyle network."""
        return [self.style] if isinstance(self.style, (str, os.PathLike)) else [str(s) for s in self.style]

    def check(self) -> TrainOptions:
        """Raise :class:`NSTError` naming the first invalid option."""
        if self.arch not in list_models():
            raise NSTError(f"unknown --arch '{self.arch}': choose one of {', '.join(list_models())}")
        for name in ("size", "batch", "steps", "checkpoint_every", "sample_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise NSTError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.size < 16:
            raise NSTError(f"--size {self.size} is too small: train at 16 pixels or more")
        if self.style_size is not None and self.style_size < 16:
            raise NSTError(f"--style-size {self.style_size} is too small: use 16 pixels or more")
        if self.workers < 0:
            raise NSTError(f"--workers must be 0 or more, got {self.workers}")
        for name in ("lr", "width"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise NSTError(f"--{name} must be a positive number, got {v!r}")
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = self.beta() if name == "style_weight" else getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise NSTError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v!r}")
        if not 0 < self.min_crop <= 1:
            raise NSTError(f"--min-crop must be in (0, 1], got {self.min_crop}")
        if self.arch == "multimodal" and self.levels not in (1, 2, 3):
            raise NSTError(f"--levels must be 1, 2 or 3, got {self.levels}")
        if len(self.level_weights) < 3 or any(not math.isfinite(w) or w < 0 for w in self.level_weights):
            raise NSTError(f"--level-weights needs three numbers >= 0, got {self.level_weights}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise NSTError(f"--seed must be between 0 and 2^63 - 1, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise NSTError(f"unknown --precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        parse_layers(self.content_layers, "content layers", allow_empty=True)
        parse_layers(self.style_layers, "style layers")
        styles = self.styles()
        if not styles or not all(styles):
            raise NSTError("give a style image (--style)")
        if self.arch != "multistyle" and len(styles) > 1:
            raise NSTError(f"--arch {self.arch} learns one style: {len(styles)} were given (--arch multistyle "
                           "learns several in one network)")
        if self.base is not None and self.arch != "multistyle":
            raise NSTError("--add-to takes a multistyle model (--arch multistyle)")
        if self.init is not None and self.arch != "johnson":
            raise NSTError(f"--init starts a Johnson network (--arch johnson), not --arch {self.arch}")
        if self.init_style is not None and self.init is None:
            raise NSTError("--init-style picks a style of the --init model: give --init too")
        if self.teacher is None and (self.distill_steps or self.distill_size is not None):
            raise NSTError("--distill-steps and --distill-size need a model to learn from: give --teacher")
        if self.teacher is not None:
            if self.arch != "johnson":
                raise NSTError(f"--teacher trains a Johnson network (--arch johnson), not --arch {self.arch}")
            # more than --steps is allowed: a long distillation trained in parts with --resume
            if not isinstance(self.distill_steps, int) or self.distill_steps < 1:
                raise NSTError(f"--distill-steps must be a positive integer, got {self.distill_steps!r}")
            if self.distill_size is not None and not 16 <= self.distill_size <= self.size:
                raise NSTError(f"--distill-size must be between 16 and --size ({self.size}), "
                               f"got {self.distill_size!r}")
        return self

    def style_side(self, native: int | None = None) -> int:
        """The style image's longest side: ``style_size``, else the training size but at least
        :data:`MIN_STYLE_SIDE` (the painting's Gram targets taken from a thumbnail hold too little of it),
        though not above the image's own longest side ``native`` (where known): no upscaling for that."""
        if self.style_size:
            return self.style_size
        return max(self.size, min(MIN_STYLE_SIDE, native or MIN_STYLE_SIDE))

    def net_config(self) -> dict:
        if self.arch == "multimodal":
            return {"width": float(self.width), "levels": int(self.levels)}
        if self.arch == "multistyle":
            return {"width": float(self.width), "n_styles": len(self.styles())}
        return {"width": float(self.width)}

    def beta(self) -> float:
        """The style weight: ``style_weight``, else :data:`STYLE_WEIGHT` (plain layers) or
        :data:`BALANCED_STYLE_WEIGHT` (``balance_style``: each layer's term a squared relative error)."""
        if self.style_weight is not None:
            return self.style_weight
        return BALANCED_STYLE_WEIGHT if self.balance_style else STYLE_WEIGHT

    def learned(self) -> dict:
        """The options that decide what is learned (the resume check and the model's metadata)."""
        learned = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUN_CONTROL}
        learned["style_weight"] = self.beta()
        if not self.balance_style:  # absent when off: the digests of runs from before the option stay valid
            del learned["balance_style"]
        for name in ("init", "init_style", "teacher", "distill_size"):  # the same for these
            if learned[name] is None:
                del learned[name]
        if not self.distill_steps:
            del learned["distill_steps"]
        return learned


# --- training -----------------------------------------------------------------------------------

def _digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _distributed() -> tuple[int, int]:
    """``(rank, world size)`` under torchrun (initializes the process group), else ``(0, 1)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("NST_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


class _AllLevels(torch.nn.Module):
    """The multimodal network returning every level (what the hierarchical loss needs)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.forward_levels(x))


class Trainer:
    """One training run: ``Trainer(options).run()``; ``run`` writes the model file and returns its path."""

    def __init__(self, o: TrainOptions, output: str | os.PathLike, *, resume: bool = False, progress=None,
                 quiet: bool = False, half: bool = False):
        self.half = half
        self.o = o.check()
        self.output = Path(output)
        self.workdir = Path(o.workdir) if o.workdir else self.output.with_name(self.output.name + ".train")
        check_folder(self.workdir, "workdir")
        self.resume = resume
        self.progress = progress
        self.quiet = quiet
        self.rank, self.world = _distributed()
        if o.batch % self.world:
            raise NSTError(f"--batch {o.batch} does not divide among {self.world} processes")
        self.local = o.batch // self.world

        self.device = resolve_device(o.device)
        if self.world > 1 and self.device.type == "cuda":
            local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
            if local_rank >= gpus:
                raise NSTError(f"process {local_rank} on this node has no GPU of its own ({gpus} visible): run at "
                               f"most {gpus} processes per node, or train on --device cpu")
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        prec = o.precision
        if prec == "auto":
            prec = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = prec
        self.files = scan_photos(Path(o.data))
        self.style_files = o.styles()
        self.style_natives = [max(source_size(p)) for p in self.style_files]
        self.style_native = self.style_natives[0]
        self.style_images = [load_image(p, size=o.style_side(n)) for p, n in zip(self.style_files,
                                                                                   self.style_natives, strict=True)]
        self.style = self.style_images[0]
        shas = [sha256_file(p) for p in self.style_files]
        self.style_sha = shas[0] if len(shas) == 1 else _digest_bytes(",".join(shas).encode())
        self.style_shas = shas

        torch.manual_seed(o.seed)
        #: a multistyle network learns every style (the first ``trained_from`` are an --add-to model's, kept)
        self.trained_from = 0
        self.base_meta: dict = {}
        if o.base is not None:
            self.model = self._extended_base(o).to(self.device)
        else:
            self.model = create(o.arch, **o.net_config()).to(self.device)
        self.init_meta: dict = {}
        if o.init is not None:
            self._load_init(o)
        self.n_styles = getattr(self.model, "n_styles", 1)
        self.levels = o.levels if o.arch == "multimodal" else 1
        self.lossnet = load_lossnet(o.net, o.weights, pooling=o.pooling, device=self.device)
        #: --teacher: the loss of the first --distill-steps steps
        self.distill = None if o.teacher is None else DistillLoss(o.teacher, self.lossnet, self.device)
        for p in self.style_files:
            self.lossnet.check_image_size(source_size(p), parse_layers(o.style_layers, "style layers"), "style image")
        self.in_size = o.size
        self.crop = o.size * 2 ** (self.levels - 1)
        # one loss per level (multimodal), or per style of this run (multistyle)
        self._losses = ([self._level_loss(k) for k in range(self.levels)] if o.arch != "multistyle"
                        else [self._level_loss(0, i) for i in range(len(self.style_files))])
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=o.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=prec == "fp16")
        self.step = 0
        self.history: list[dict] = []
        self.dataset = PhotoDataset(self.files, self.crop, o.seed, o.min_crop)
        self.digest = self._config_digest()
        # what the loop calls: the network, or a view of the multimodal net returning every level
        self.module: torch.nn.Module = self.model if self.levels == 1 else _AllLevels(self.model)
        if self.world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- setup
    def _extended_base(self, o: TrainOptions) -> torch.nn.Module:
        """An --add-to model with one new style per style image: only the new rows of its norms learn
        (the convolutions and the other styles' scales and shifts are frozen; their gradients zeroed)."""
        net, meta = load_model(o.base)
        if meta.get("arch") != "multistyle":
            raise NSTError(f"--add-to '{o.base}' is a {meta.get('arch')} model, not a multistyle one")
        self.base_meta = meta
        old = net.n_styles
        for _ in self.style_files:
            net = net.with_style_added()
        net.train().requires_grad_(False)
        for norm in net.norms():
            for prm in (norm.gamma, norm.beta):
                prm.requires_grad_(True)
                prm.register_hook(lambda g, old=old: torch.cat([torch.zeros_like(g[:old]), g[old:]]))
        self.trained_from = old
        return net

    def _load_init(self, o: TrainOptions) -> None:
        """--init: start from a trained Johnson model, or from one style of a multistyle model (its
        convolutions and that style's scales and shifts); every weight then learns."""
        net, meta = load_model(o.init)
        arch = meta.get("arch")
        style = None
        if arch == "multistyle":
            names = [s.get("name") for s in meta.get("styles", []) if isinstance(s, dict)]
            try:  # one index or name: a one-hot style vector
                k = int(style_weights(0 if o.init_style is None else o.init_style, net.n_styles, names).argmax())
            except NSTError as e:
                raise NSTError(f"--init-style: {e} ('{o.init}')") from None
            style = names[k] if k < len(names) else str(k)
            net = net.single_style(k)
        elif arch != "johnson":
            raise NSTError(f"--init '{o.init}' is a {arch} model: give a johnson or multistyle one")
        elif o.init_style is not None:
            raise NSTError(f"--init-style: '{o.init}' is a one-style (johnson) model")
        want = {"width": float(o.width), "n_residual": self.model.n_residual}
        have = {"width": net.width, "n_residual": net.n_residual}
        if have != want:
            raise NSTError(f"--init '{o.init}' has width {net.width:g} and {net.n_residual} residual blocks; "
                           f"this run trains width {o.width:g} with {self.model.n_residual}: use --width {net.width:g}")
        self.model.load_state_dict(net.state_dict())
        self.init_meta = {"model": Path(o.init).name, "sha256": sha256_file(o.init), "arch": arch,
                          **({"style": style} if style is not None else {})}

    def _level_loss(self, k: int, style_index: int = 0) -> PerceptualLoss:
        o = self.o
        size = o.size * 2 ** k
        min_side = self.lossnet.min_input_size(
            list(parse_layers(o.content_layers, "content layers", allow_empty=True))
            + list(parse_layers(o.style_layers, "style layers")))
        if size < min_side:
            raise NSTError(f"--size {o.size} is too small for the loss layers: they need {min_side} pixels")
        content = parse_layers(o.content_layers, "content layers", allow_empty=True)
        # per element: w_l / (C H W) at this level's size (the C H W of each layer measured once)
        with torch.no_grad():
            probe = self.lossnet(torch.zeros(1, 3, size, size, device=self.device), list(content)) if content else {}
        content = {name: w / probe[name][0].numel() for name, w in content.items()}
        style = (self.style_images[style_index] if k == 0
                 else load_image(self.style_files[0], size=o.style_side(self.style_native) * 2 ** k)).to(self.device)
        style_layers = parse_layers(o.style_layers, "style layers")
        if o.balance_style:
            style_layers = balanced_style_layers(self.lossnet, style, style_layers)
        loss = PerceptualLoss(self.lossnet, content, style_layers,
                              content_weight=o.content_weight, style_weight=o.beta(), tv_weight=o.tv_weight)
        loss.set_style(style)
        return loss

    def _config_digest(self) -> str:
        options = {k: v for k, v in self.o.learned().items()
                   if k not in ("style", "data", "base", "init", "teacher")}
        # models by content, not by path
        if self.o.base is not None:
            options["base_sha256"] = sha256_file(self.o.base)
        if self.init_meta:
            options["init_sha256"] = self.init_meta["sha256"]
        if self.distill is not None:
            options["teacher_sha256"] = self.distill.meta["sha256"]
        options["style_side"] = self.o.style_side(self.style_native)  # the default's value counts, not None
        files = [p.relative_to(self.o.data).as_posix() for p in self.files]
        data = json.dumps({"options": options, "style": self.style_sha, "files": files}, sort_keys=True, default=str)
        return _digest_bytes(data.encode())[:16]

    # -- the loss of one batch
    def style_of_step(self, step: int) -> int:
        """The style a step trains (multistyle): this run's styles in turn."""
        return step % len(self.style_files)

    def _style_weights(self, i: int, b: int) -> torch.Tensor:
        w = torch.zeros(b, self.n_styles, device=self.device)
        w[:, self.trained_from + i] = 1.0
        return w

    def loss(self, photos: torch.Tensor, style_index: int = 0) -> tuple[torch.Tensor, LossTerms]:
        """Mean loss per image of a batch of crops ``(B, 3, crop, crop)`` (for a multistyle network: on this
        run's style ``style_index``)."""
        o = self.o
        photos = photos.to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if self.distill is not None and self.step < o.distill_steps:
            return self.distill(self.module, photos, o.distill_size or o.size, dtype)
        b = photos.shape[0]
        x = photos if self.levels == 1 else F.interpolate(photos, size=(self.in_size, self.in_size),
                                                         mode="bicubic", antialias=True).clamp(0, 1)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outs = self.module(x) if o.arch != "multistyle" else self.module(x, self._style_weights(style_index, b))
        outs = [outs] if self.levels == 1 else list(outs)
        # The loss network runs under bf16 autocast too, but never in fp16: the caffe VGG19's
        # activations (0-255 input scale) and their Gram matrices overflow fp16 (inf at step 1).
        total, terms = None, [0.0, 0.0, 0.0, 0.0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            losses = self._losses if o.arch != "multistyle" else [self._losses[style_index]]
            for k, (y, lossfn) in enumerate(zip(outs, losses, strict=True)):
                size = self.in_size * 2 ** k
                target = photos if size == self.crop else F.interpolate(
                    photos, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
                lossfn.set_content(target)
                lam = o.level_weights[k] if self.levels > 1 else 1.0
                value, t = lossfn(y.float())
                value = lam * value / b
                total = value if total is None else total + value
                for i, v in enumerate((t.total, t.content, t.style, t.tv)):
                    terms[i] += lam * v / b
        return total, LossTerms(*terms)

    # -- checkpoints
    def _checkpoint_path(self) -> Path:
        return self.workdir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "digest": self.digest, "step": self.step,
            "arch": self.o.arch, "config": self.model.config(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "history": self.history,
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_write(self._checkpoint_path(), "wb") as fh:
                torch.save(state, fh)
        except OSError as e:
            raise NSTError(f"cannot write checkpoint '{self._checkpoint_path()}': {e.strerror or e}") from None

    def load_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if not path.is_file():
            raise NSTError(f"--resume: no checkpoint '{path}' (written every --checkpoint-every steps)")
        state = load_torch(path, "checkpoint")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise NSTError(f"'{path}' is not a training checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise NSTError(f"checkpoint '{path}' has version {state.get('version')}, expected {CHECKPOINT_VERSION}")
        if state.get("digest") != self.digest:
            raise NSTError(f"checkpoint '{path}' was written by a run with other options, style or data: "
                           "resume with the same ones (only --steps and run control may change)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.history = list(state["history"])

    # -- samples and logs
    @torch.no_grad()
    def save_samples(self) -> None:
        if self.rank != 0:
            return
        n = min(4, len(self.files))
        xs = torch.stack([PhotoDataset(self.files[i:i + 1], self.in_size, 0, 1.0).sample(0) for i in range(n)])
        self.model.eval()
        try:
            xs_dev = xs.to(self.device)
            ys = (self.model(xs_dev) if self.o.arch != "multistyle" else self.model(
                xs_dev, self._style_weights(0, n) if n == 1 else torch.stack(
                    [self._style_weights(i % len(self.style_files), 1)[0] for i in range(n)]))).float().cpu()
        finally:
            self.model.train()
        if ys.shape[-1] != xs.shape[-1]:
            xs = F.interpolate(xs, size=ys.shape[-2:], mode="bicubic").clamp(0, 1)
        grid = torch.cat([torch.cat(list(xs), dim=-1), torch.cat(list(ys), dim=-1)], dim=-2)
        (self.workdir / "samples").mkdir(parents=True, exist_ok=True)
        save_image(grid.unsqueeze(0), self.workdir / "samples" / f"step_{self.step:06d}.png")

    def _write_log(self) -> None:
        if self.rank != 0:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.workdir / "loss.json", "w") as fh:
            json.dump({"digest": self.digest, "options": self.o.learned(), "history": self.history}, fh, indent=0)

    # -- the loop
    def run(self) -> Path:
        """Train to ``steps`` (from a checkpoint when resuming); write the model; return its path."""

        o = self.o
        if self.resume:
            self.load_checkpoint()
            if self.step >= o.steps:
                raise NSTError(f"the checkpoint is at step {self.step}: ask for more --steps than that")
        elif self.rank == 0 and self._checkpoint_path().exists():
            raise NSTError(f"'{self._checkpoint_path()}' exists: continue it with --resume or remove "
                           f"'{self.workdir}'")
        self.model.train()
        batches = step_batches(self.dataset, self.step, o.batch, self.local, self.rank, o.workers)
        t0, seen0 = time.perf_counter(), self.step
        window = []
        # Denormal floats appear in the activations as training goes on and slow CPU convolutions
        # and Adam several times over: flush them to zero.
        flush = torch.set_flush_denormal(True)
        try:
            with DeferredInterrupt() as stop, deterministic(o.deterministic):
                self._loop(batches, stop, t0, seen0, window)
        finally:
            if flush:
                torch.set_flush_denormal(False)
        return self.finish()

    def _loop(self, batches, stop, t0: float, seen0: int, window: list) -> None:
        o = self.o
        for photos in batches:
            if self.step >= o.steps:
                break
            if self.distill is not None:
                self._distill_phase()
            self.optimizer.zero_grad(set_to_none=True)
            total, terms = self.loss(photos.to(self.device, non_blocking=True), self.style_of_step(self.step))
            if not torch.isfinite(total):  # nothing updated yet: the last checkpoint stays valid
                raise NSTError(f"the loss became {float(total)} at step {self.step + 1}: lower --lr "
                               "or the loss weights (the last checkpoint is kept)")
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            window.append(terms)
            # a log line ends the distillation too: no mean mixes its terms with the perceptual loss's
            if self.step % o.log_every == 0 or self.step in (o.steps, o.distill_steps):
                rate = (self.step - seen0) * o.batch / max(time.perf_counter() - t0, 1e-9)
                mean = {k: sum(getattr(t, k) for t in window) / len(window)
                        for k in ("total", "content", "style", "tv")}
                # distillation steps: content holds the pixel term, style the feature term
                phase = {"distill": True} if self.step <= o.distill_steps else {}
                self.history.append({"step": self.step, **mean, "images_per_s": rate, **phase})
                window = []
                self._write_log()
            if self.progress is not None and self.rank == 0:
                rate = (self.step - seen0) * o.batch / max(time.perf_counter() - t0, 1e-9)
                self.progress(self.step, o.steps, terms, rate)
            if self.step % o.sample_every == 0:
                self.save_samples()
            if self.step % o.checkpoint_every == 0 or self.step == o.steps:
                self.save_checkpoint()
            if stop.requested:
                self.save_checkpoint()
                raise KeyboardInterrupt

    def _distill_phase(self) -> None:
        """--teacher: this step's learning rate; a fresh Adam when the style phase begins."""
        o = self.o
        if self.step == o.distill_steps:
            self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=o.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = distill_lr(self.step, o.distill_steps, o.lr)

    def finish(self) -> Path:
        if self.rank == 0:
            meta = {
                "style": Path(self.style_files[0]).name if len(self.style_files) == 1 else None,
                "style_sha256": self.style_sha, "steps": self.step,
                "training": {k: v for k, v in self.o.learned().items() if k not in ("style", "data")},
                "training_digest": self.digest, "data_files": len(self.files),
                "final_loss": self.history[-1] if self.history else None,
                "input": {"layout": "NCHW", "colour": "RGB", "range": [0.0, 1.0], "dtype": "float32"},
                "output": {"layout": "NCHW", "colour": "RGB", "range": [0.0, 1.0], "dtype": "float32"},
                "output_scale": 2 ** (self.levels - 1),
                "toolkit": _version(),
            }
            if self.init_meta:
                meta["init"] = self.init_meta
            if self.distill is not None:
                meta["distilled"] = {**self.distill.meta, "steps": self.o.distill_steps}
            if self.o.arch == "multistyle":
                before = self.base_meta.get("styles", [])
                meta["styles"] = before + [{"name": Path(p).stem, "file": Path(p).name, "sha256": h}
                                           for p, h in zip(self.style_files, self.style_shas, strict=True)]
                meta["style"] = ", ".join(s["name"] for s in meta["styles"])
            save_model(self.output, self.model, self.o.arch, meta, half=self.half)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return self.output


def _version() -> str:
    from . import __version__

    return __version__


def train(options: TrainOptions, output: str | os.PathLike, *, resume: bool = False, progress=None) -> Path:
    """Train a feed-forward network for one style and write it to ``output`` (see :class:`Trainer`)."""
    return Trainer(options, output, resume=resume, progress=progress).run()
