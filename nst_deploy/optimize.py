"""The per-image optimization loop (Gatys et al.): optimize the output's pixels.

``stylize(content, style, **options)`` loads the loss network, computes the targets once per
scale, and runs L-BFGS (default), Adam or plain gradient descent on the pixels (RGB in ``[0, 1]``).

* The pixels are stepped by :class:`nst_deploy.pixels.PixelOptimizer`, whose guard restores the best
  iterate on a NaN/Inf loss or gradient (and switches L-BFGS to Adam), so the result is never NaN.
* Coarse-to-fine (``scales``): the first scale starts from ``init``; each next scale starts from
  the previous result, upsampled.
* Colour preservation (``preserve_color``): luminance-only transfer (Gatys et al. 2016,
  "Preserving color in neural artistic style transfer"): the style's luminance is matched to the
  content's mean and standard deviation, the optimization runs on luminance images, and the
  result's luminance is recombined with the content's chroma (YIQ).
* Checkpoints (``checkpoint``, ``checkpoint_every``, ``resume``) hold the pixels, the best
  iterate and the optimizer's state, written atomically; a resumed run continues exactly where the
  checkpoint was taken. Ctrl-C finishes the current step, writes the checkpoint, then stops.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .controls import RGB_TO_YIQ
from .deform import flow_tv, tps_grid, warp, warp_loss
from .devices import available_memory, deterministic, resolve_device
from .errors import NSTError
from .fsutil import atomic_write, check_writable, load_torch
from .images import (
    as_image_tensor,
    cover_crop,
    load_image,
    resize,
    resize_longest,
    save_image,
    source_size,
    target_size,
    to_pil,
)
from .interrupts import DeferredInterrupt
from .keypoints import draw_keypoints, match_keypoints, read_keypoints
from .losses import LossTerms, PerceptualLoss
from .lossnets import load_lossnet
from .options import DEFAULT_LR, INITS, MAX_SIZE, OPTIMIZERS, StylizeOptions  # noqa: F401 (re-exported)
from .pixels import PixelOptimizer, StepInfo, optimize_pixels  # noqa: F401 (re-exported)
from .presets import parse_layers
from .styles import Style, StyleLoss, as_styles, assign_layers, load_style_mask

__all__ = [
    "INITS",
    "OPTIMIZERS",
    "PixelOptimizer",
    "StepInfo",
    "StylizeOptions",
    "optimize_pixels",
    "stylize",
]

CHECKPOINT_FORMAT = "nst-deploy/stylize-checkpoint"
CHECKPOINT_VERSION = 1


# --- colour -------------------------------------------------------------------------------------

_RGB2YIQ = torch.from_numpy(RGB_TO_YIQ)


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB to YIQ (Y in ``[0, 1]``)."""
    return torch.einsum("ij,njhw->nihw", _RGB2YIQ.to(x), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_yiq`."""
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2YIQ).to(x), x)


def match_luminance(style_y: torch.Tensor, content_y: torch.Tensor) -> torch.Tensor:
    """The style's luminance with the content's mean and standard deviation (clamped to [0, 1])."""
    s_std = style_y.std().clamp_min(1e-6)
    return ((style_y - style_y.mean()) * (content_y.std() / s_std) + content_y.mean()).clamp(0.0, 1.0)


def _grey(y: torch.Tensor) -> torch.Tensor:
    return y.expand(-1, 3, -1, -1).contiguous()


class _GreyLoss:
    """A loss of RGB images as a loss of one-channel luminance images (shown as grey)."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, y: torch.Tensor):
        return self.loss(y.expand(-1, 3, -1, -1))


class _DeformObjective:
    """The joint objective of deformable style transfer over ``z = (pixels X, theta)`` (Kim et al. 2020).

    ``L = alpha L_content(X) + beta L_style(X) + tv R_TV(X) + beta L_style(W(X, theta))
    + L_ref (w_warp L_warp(P, P', theta) + w_flow R_TV(flow))``: ``W`` the thin-plate-spline warp
    moving keypoint ``p_i`` to ``p_i + theta_i``, ``L_warp = (1/k) sum ||p_i + theta_i - p'_i||``
    (normalized coordinates), ``R_TV(flow)`` the flow's total variation in pixels. The two
    geometric terms are scaled by ``L_ref``, the perceptual loss of the content image itself at this
    scale (fixed by the inputs), so that their weights mean the same at every size and for every
    loss network.
    """

    def __init__(self, base, loss: PerceptualLoss, o: StylizeOptions, shape, pairs, ref: float):
        self.base, self.loss, self.o = base, loss, o
        self.shape = tuple(shape)
        self.n = math.prod(self.shape)
        self.points, self.targets = pairs
        self.ref = max(float(ref), 1e-12)
        self.grey = self.shape[1] == 1

    def pack(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(-1), theta.to(x).reshape(-1)])

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[: self.n].view(self.shape), z[self.n:].view(-1, 2)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        z[: self.n].clamp_(0.0, 1.0)  # pixels in [0, 1]; theta free
        return z

    def __call__(self, z: torch.Tensor):
        x, theta = self.split(z)
        total, t = self.base(x)
        shown = x.expand(-1, 3, -1, -1) if self.grey else x
        warped, flow = warp(shown, self.points, theta)
        style = self.loss.style
        s2 = self.o.style_weight * style(self.loss.net(warped, style.layers)) if style is not None else total * 0
        geo = self.ref * (self.o.warp_weight * warp_loss(self.points, theta, self.targets)
                          + self.o.flow_tv * flow_tv(flow))
        total = total + s2 + geo
        return total, LossTerms(float(total.detach()), t.content, t.style + float(s2.detach()), t.tv,
                                float(geo.detach()))


def _keypoints(o: StylizeOptions, net, inputs: _Inputs, device):
    """The keypoint pairs ``(P, P')`` (normalized coordinates) of a deformable run, on ``device``."""
    c_full, s_full = inputs.content, inputs.style_images
    if len(s_full) != 1:
        raise NSTError("deformable transfer takes one style image")
    if o.keypoints:
        if not Path(o.keypoints).is_file():
            raise NSTError(f"keypoints file '{o.keypoints}' does not exist")
        c_hw = inputs.content_hw if min(inputs.content_hw) > 0 else tuple(c_full.shape[-2:])
        s_hw = inputs.style_hw if min(inputs.style_hw) > 0 else tuple(s_full[0].shape[-2:])
        p, q = read_keypoints(o.keypoints, c_hw, s_hw)
    else:
        with torch.no_grad():
            p, q = match_keypoints(net, c_full.to(device), s_full[0].to(device), k=o.k, seed=o.seed)
    return p.float().to(device), q.float().to(device)


# --- inputs -------------------------------------------------------------------------------------

def _check_min(x: torch.Tensor, min_side: int, what: str, size: int) -> None:
    h, w = x.shape[-2:]
    if min(h, w) < min_side:
        raise NSTError(f"the {what} at size {size} is {w}x{h} pixels; the loss network's layers need at least "
                       f"{min_side}x{min_side}: use a larger size")


def estimate_memory(hw: tuple[int, int], style_hw: tuple[int, int], optimizer: str, history: int) -> int:
    """Bytes a VGG19 stylization of an ``hw`` output needs, about (fp32).

    Measured on the CPU (``benchmarks/bench_stylize.py``, 256 and 512 px): about 3.4 KB per output
    pixel with Adam (activations kept for the backward pass), 6.0 KB with L-BFGS at history 100 (each
    history pair holds two copies of the image); the style image's forward pass needs no gradient.
    """
    px, spx = hw[0] * hw[1], style_hw[0] * style_hw[1]
    per_px = 3500 + (26 * history if optimizer == "lbfgs" else 60)
    return 100 * 2**20 + px * per_px + spx * 1500


def _check_memory(o: StylizeOptions, hw, style_hw, device: torch.device, n_styles: int = 1) -> None:
    need = estimate_memory(hw, style_hw, o.optimizer, o.lbfgs_history) + (n_styles - 1) * 8 * 2**20
    have = available_memory(device)
    if have is not None and need > have:
        where = "GPU memory free" if device.type == "cuda" else "memory available"
        raise NSTError(
            f"a {hw[1]}x{hw[0]} stylization needs about {need / 2**30:.1f} GiB, and only {have / 2**30:.1f} GiB "
            f"of {where}: use a smaller --size" + (", --optimizer adam or a smaller --lbfgs-history"
                                                    if o.optimizer == "lbfgs" else "")
        )


def _initial(init: str, content: torch.Tensor, style: torch.Tensor, seed: int) -> torch.Tensor:
    hw = tuple(content.shape[-2:])
    if init == "content":
        return content.clone()
    if init == "noise":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(content.shape, generator=g).to(content)
    if init == "style":
        return resize(style.cpu(), hw).to(content)
    if init == "white":
        return torch.ones_like(content)
    path = Path(init)
    if not path.exists():
        raise NSTError(f"unknown init '{init}': use content, noise, style, white or an image path")
    return resize(load_image(path), hw).to(content)


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# --- checkpoints, logs, interrupts --------------------------------------------------------------

def _save_checkpoint(path: Path, state: dict) -> None:
    try:
        with atomic_write(path, "wb") as fh:
            torch.save(state, fh)
    except OSError as e:
        raise NSTError(f"cannot write checkpoint '{path}': {e.strerror or e}") from None


def _load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise NSTError(f"checkpoint '{path}' does not exist (resume needs one written by --checkpoint)")
    state = load_torch(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise NSTError(f"'{path}' is not a stylize checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise NSTError(f"checkpoint '{path}' has version {state.get('version')}, this release reads "
                       f"{CHECKPOINT_VERSION}")
    return state


#: How a checkpoint's recorded settings are named to the user when they differ from the run's.
_SETTING_NAMES = {"content_digest": "the content image or size", "styles": "the style images, weights, layers or size",
                  "masks_digest": "the masks", "keypoints_digest": "the keypoints", "scale_sizes": "size or scales",
                  "scale_steps": "steps"}


def _write_json(path: Path, obj) -> None:
    try:
        with atomic_write(path, "w") as fh:
            json.dump(obj, fh, indent=1)
    except OSError as e:
        raise NSTError(f"cannot write '{path}': {e.strerror or e}") from None


# --- stylize ------------------------------------------------------------------------------------

def stylize(
    content,
    style,
    options: StylizeOptions | None = None,
    *,
    callback: Callable[[StepInfo], None] | None = None,
    as_tensor: bool | None = None,
    **kw,
):
    """Stylize ``content`` with one or several styles by optimizing the pixels (Gatys et al.).

    Args:
        content: an image path, PIL image, ``HxWx3`` uint8 array or RGB tensor ``(1, 3, H, W)`` in
            ``[0, 1]``.
        style: an image (same kinds), a :class:`~nst_deploy.styles.Style` (image, weight, layers,
            mask, style mask), or a list of either (several styles: hierarchical by default, or
            ``multi_style="blend"``; with masks, each style in its region).
        options: a :class:`StylizeOptions`; keyword arguments (its field names) override it.
        callback: called after every step with a :class:`StepInfo`.
        as_tensor: return a tensor (``True``) or a PIL image (``False``); by default a tensor
            exactly when ``content`` is one.

    Returns:
        The stylized image, the content's aspect with longest side ``size`` (the last of
        ``scales``): a tensor ``(1, 3, H, W)`` on the CPU when ``content`` is a tensor, otherwise a
        PIL image.

    Raises:
        NSTError: bad options or inputs, a checkpoint that does not match, a loss that stays NaN.
        KeyboardInterrupt: after Ctrl-C, once the current step is done and the checkpoint (if
            any) is written.
    """
    options = replace(options) if options else StylizeOptions()
    options.update(**kw)
    o = options.resolved()
    if o.checkpoint:  # before any work: a run whose checkpoint or log cannot be written is refused
        check_writable(o.checkpoint, "checkpoint")
    if o.log_json:
        check_writable(o.log_json, "log")
    styles = as_styles(style)
    device = resolve_device(o.device)
    c_full = as_image_tensor(content, "content", o.size)
    s_size = o.size if o.style_rep != "gram" else max(1, round(o.size * o.style_scale))
    many = len(styles) > 1
    s_full = [as_image_tensor(st.image, f"style {i}" if many else "style", s_size) for i, st in enumerate(styles, 1)]
    masks = [None if st.mask is None else load_style_mask(st.mask, tuple(c_full.shape[-2:]),
                                                          f"mask of style {i}" if many else "mask")
             for i, st in enumerate(styles, 1)]
    if any(m is not None for m in masks) and not all(m is not None for m in masks):
        raise NSTError("give a mask for every style, or for none")
    for i, m in enumerate(masks, 1):
        if m is not None and not bool((m > 0).any()):
            raise NSTError(f"{f'mask of style {i}' if many else 'mask'} is empty (all black): its style would "
                           "apply nowhere")
    s_masks = [None if st.style_mask is None else load_style_mask(st.style_mask, tuple(sf.shape[-2:]),
                                                                  f"style mask {i}" if many else "style mask")
               for i, (st, sf) in enumerate(zip(styles, s_full, strict=True), 1)]
    style_hw = [source_size(st.image) for st in styles]
    inputs = _Inputs(c_full, styles, s_full, None if masks[0] is None else torch.cat(masks, 1), s_masks,
                     source_size(content), style_hw[0], style_hw)
    out = _run(o, inputs, device, callback)
    if as_tensor is None:
        as_tensor = isinstance(content, torch.Tensor)
    return out if as_tensor else to_pil(out)


@dataclass
class _Inputs:
    """The images of a run at full size: content, styles, output masks ``(1, n, H, W)``, style masks."""

    content: torch.Tensor
    styles: list[Style]
    style_images: list[torch.Tensor]
    masks: torch.Tensor | None
    style_masks: list[torch.Tensor | None]
    #: the content's and first style's size as given (keypoint files are in those pixels)
    content_hw: tuple[int, int] = (0, 0)
    style_hw: tuple[int, int] = (0, 0)
    #: every style image's size as given
    style_source_hw: list[tuple[int, int]] = field(default_factory=list)

    def digests(self) -> dict:
        return {"content_digest": _digest(self.content),
                "styles": [{"digest": _digest(img), "weight": float(st.weight),
                            "layers": None if st.layers is None else parse_layers(st.layers, "style layers"),
                            "style_mask": None if sm is None else _digest(sm)}
                           for st, img, sm in zip(self.styles, self.style_images, self.style_masks, strict=True)],
                "masks_digest": None if self.masks is None else _digest(self.masks)}


def _layer_sets(o: StylizeOptions, styles: list[Style], has_masks: bool, layer_names) -> list[dict[str, float]]:
    """Each style's layers: its own, else the default (module docstring of :mod:`nst_deploy.styles`)."""
    own = [None if st.layers is None else parse_layers(st.layers, f"layers of style {i}")
           for i, st in enumerate(styles, 1)]
    if len(styles) > 1 and all(x is None for x in own) and o.multi_style == "hierarchical" and not has_masks:
        return assign_layers(o.style_layers, len(styles), layer_names)
    return [o.style_layers if x is None else x for x in own]


def _run(o: StylizeOptions, inputs: _Inputs, device, callback) -> torch.Tensor:
    with deterministic(o.deterministic):
        return _run_scales(o, inputs, device, callback)


@dataclass
class _Setup:
    """What every scale of a run shares: the loss network and losses (targets set per scale), the
    keypoint pairs of a deformable run, the smallest image the layers take, the run's settings (what a
    checkpoint must match) and whether the style images take the output's size."""

    net: object
    loss: PerceptualLoss
    style_loss: StyleLoss
    pairs: tuple[torch.Tensor, torch.Tensor] | None
    min_side: int
    settings: dict
    same_size: bool


def _setup(o: StylizeOptions, inputs: _Inputs, device) -> _Setup:
    """Build the losses and check, before any step, what can be checked: memory, the workspace."""
    net = load_lossnet(o.net, o.weights, pooling=o.pooling, device=device)
    layer_sets = _layer_sets(o, inputs.styles, inputs.masks is not None, net.layer_names)
    many = len(layer_sets) > 1
    for i, (layers, hw) in enumerate(zip(layer_sets, inputs.style_source_hw, strict=False), 1):
        used = [name for name, w in layers.items() if w]
        if used:
            net.check_image_size(hw, used, f"style image{f' {i}' if many else ''}")
    style_loss = StyleLoss(layer_sets, [float(st.weight) for st in inputs.styles], rep=o.style_rep, window=o.window,
                           blend=o.multi_style == "blend" and len(layer_sets) > 1)
    loss = PerceptualLoss(net, o.content_layers, o.style_layers, o.content_weight, o.style_weight, o.tv_weight,
                          style=style_loss)
    pairs = _keypoints(o, net, inputs, device) if o.deform else None
    if loss.layers:
        net.truncate(loss.layers[-1])  # the weights past the deepest layer used are never needed
    settings = o.settings() | inputs.digests()
    if pairs is not None:
        settings["keypoints_digest"] = _digest(torch.cat(pairs, 1))
    same_size = o.style_rep != "gram"  # autocorr, local: the style at the output's size
    c_hw = inputs.content.shape[-2:]

    def style_hw(s: torch.Tensor) -> tuple[int, int]:
        if same_size:
            return target_size(*c_hw, size=o.size)
        return target_size(*s.shape[-2:], size=max(1, round(o.size * o.style_scale)))

    biggest = max((style_hw(s) for s in inputs.style_images), key=lambda t: t[0] * t[1])
    _check_memory(o, target_size(*c_hw, size=o.size), biggest, device, len(inputs.style_images))
    if o.workspace:
        try:
            Path(o.workspace).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise NSTError(f"cannot create workspace '{o.workspace}': {e.strerror or e}") from None
    return _Setup(net, loss, style_loss, pairs, net.min_input_size(loss.layers) if loss.layers else 1, settings,
                  same_size)


def _resume_state(o: StylizeOptions, settings: dict) -> dict | None:
    """The checkpoint to resume from (``--resume``), refused when made with other settings."""
    if not o.resume:
        return None
    ckpt_path = Path(o.checkpoint) if o.checkpoint else None
    if ckpt_path is None or not ckpt_path.exists():
        raise NSTError(f"checkpoint '{ckpt_path}' does not exist (resume needs one written by --checkpoint)")
    resume = _load_checkpoint(ckpt_path)
    theirs = resume.get("settings", {})
    diff = sorted({_SETTING_NAMES.get(k, k.replace("_", "-"))
                   for k in set(settings) | set(theirs) if settings.get(k) != theirs.get(k)})
    if diff:
        raise NSTError(f"checkpoint '{ckpt_path}' was made with other settings ({', '.join(diff)}); "
                       "resume with the same options and images, or start without --resume")
    if int(resume["scale"]) >= len(o.scale_sizes):
        raise NSTError(f"checkpoint '{ckpt_path}' is at scale {int(resume['scale']) + 1}, but only "
                       f"{len(o.scale_sizes)} scales are set")
    return resume


class _Recorder:
    """What a run leaves behind as it goes: the step log and status (``--log-json``), checkpoints,
    images saved every N steps, and the caller's callback."""

    def __init__(self, o: StylizeOptions, settings: dict, log: list[dict], callback):
        self.o, self.settings, self.log, self.callback = o, settings, log, callback
        self.status = "running"
        self.ckpt_path = Path(o.checkpoint) if o.checkpoint else None

    def write_log(self) -> None:
        if self.o.log_json:
            _write_json(Path(self.o.log_json), {"format": "nst-deploy/stylize-log", "status": self.status,
                                                "settings": self.settings, "steps": self.log})

    def checkpoint(self, si: int, po: PixelOptimizer) -> None:
        if self.ckpt_path is not None:
            _save_checkpoint(self.ckpt_path, {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                              "settings": self.settings, "scale": si,
                                              "optimizer_state": po.state_dict(), "log": self.log})
            self.write_log()

    def step(self, info: StepInfo, hw: tuple[int, int], finish) -> None:
        """One step done: logged, shown to the callback, saved and checkpointed as asked."""
        o, step = self.o, info.step
        self.log.append({"scale": info.scale, "size": list(hw), "step": step, "optimizer": info.optimizer,
                         **info.terms.as_dict(), "seconds": round(info.seconds, 6)})
        if self.callback is not None:
            self.callback(info)
        if o.save_every and step % o.save_every == 0:
            name = f"step_{step:05d}.png" if info.scales == 1 else f"scale{info.scale + 1}_step_{step:05d}.png"
            save_image(finish(), Path(o.workspace) / name)


def _scale_images(o: StylizeOptions, inputs: _Inputs, setup: _Setup, size: int, device):
    """The content and styles at one scale, on ``device``, with the losses' targets set; under
    ``preserve_color`` the luminance alone and the content's chroma to put back at the end."""
    c = resize_longest(inputs.content, size)
    ss = [cover_crop(sf, tuple(c.shape[-2:])) if setup.same_size
          else resize_longest(sf, max(1, round(size * o.style_scale))) for sf in inputs.style_images]
    _check_min(c, setup.min_side, "content", size)
    for s in ss:
        _check_min(s, setup.min_side, "style (after style-scale)", size)
    chroma = None
    if o.preserve_color:
        yiq = rgb_to_yiq(c)
        chroma = yiq[:, 1:]
        ss = [_grey(match_luminance(rgb_to_yiq(s)[:, :1], yiq[:, :1])) for s in ss]
        c = _grey(yiq[:, :1])
    c, ss = c.to(device), [s.to(device) for s in ss]
    if inputs.masks is not None:
        setup.style_loss.set_masks(resize(inputs.masks, tuple(c.shape[-2:]), mode="bilinear").to(device))
    s_masks = [None if m is None else resize(m, tuple(s.shape[-2:]), mode="bilinear").to(device)
               for m, s in zip(inputs.style_masks, ss, strict=True)]
    setup.loss.set_content(c)
    setup.loss.set_style(ss, s_masks)
    return c, ss[0], chroma


def _optimizer(o: StylizeOptions, setup: _Setup, c, s, prev, theta):
    """The scale's optimizer and, for a deformable run, its joint objective (else None).

    The first scale starts from init, the next ones from the last result, upsampled. Under
    preserve_color the variable is the luminance alone (one channel, shown to the network as a grey
    image), so no colour can appear and cancel out later."""
    if prev is not None:
        x0 = resize(prev.cpu(), tuple(c.shape[-2:])).to(c)
    else:
        x0 = _initial(o.init, c, s, o.seed)
        if o.preserve_color:
            x0 = rgb_to_yiq(x0)[:, :1].clamp(0.0, 1.0)
    objective = setup.loss if not o.preserve_color else _GreyLoss(setup.loss)
    project = joint = None
    if setup.pairs is not None:  # the variable is (pixels, theta): see _DeformObjective
        with torch.no_grad():
            ref = setup.loss(c if c.shape[1] == 3 else c.expand(-1, 3, -1, -1))[1].total
        joint = objective = _DeformObjective(objective, setup.loss, o, x0.shape, setup.pairs, ref)
        x0, project = joint.pack(x0, theta), joint.project
    # The joint objective's keypoint term is not smooth: L-BFGS now and then takes a step that raises
    # the loss 2-3x. The strong-Wolfe line search fixes that but spends its 25 evaluations on most
    # steps, so a deform run instead restarts from the best iterate after any step that rises 1.5x.
    po = PixelOptimizer(objective, x0, optimizer=o.optimizer, lr=o.lr, lbfgs_history=o.lbfgs_history,
                        line_search=o.line_search, project=project,
                        diverged=1.5 if joint is not None else PixelOptimizer.DIVERGED)
    return po, joint


def _finisher(chroma, joint, pairs):
    """The output image of an iterate: clamped; the content's chroma put back (preserve_color); a
    deformable run's image warped by its theta."""

    def finish(x):
        theta_now = None
        if joint is not None:  # the output is the warped image W(X, theta)
            x, theta_now = joint.split(x.detach())
        x = x.detach().cpu()
        x = x.clamp(0.0, 1.0) if chroma is None else yiq_to_rgb(torch.cat([x[:, :1], chroma.cpu()], 1)).clamp(0.0, 1.0)
        if theta_now is not None:
            x = warp(x, pairs[0].cpu(), theta_now.cpu())[0].clamp(0.0, 1.0)
        return x

    return finish


def _step_loop(o: StylizeOptions, po: PixelOptimizer, si: int, steps: int, hw, joint, pairs, rec: _Recorder,
               interrupt: DeferredInterrupt, finish) -> None:
    """Step ``po`` up to ``steps``; a first Ctrl-C checkpoints and stops after the step under way."""
    n = len(o.scale_sizes)
    while po.step_count < steps:
        t0 = time.perf_counter()
        terms = po.step()
        dt = time.perf_counter() - t0
        x = po.x.detach()
        shown, extra = x, None
        if joint is not None:
            shown, theta = joint.split(x)
            extra = {"points": pairs[0], "targets": pairs[1], "theta": theta}
        rec.step(StepInfo(po.step_count, steps, terms, po.optimizer, shown, si, n, dt, extra), hw,
                 lambda: finish(po.x))
        if o.checkpoint_every and (po.step_count % o.checkpoint_every == 0 or po.step_count == steps):
            rec.checkpoint(si, po)
        if interrupt.requested:
            rec.checkpoint(si, po)
            raise KeyboardInterrupt


def _scales(o: StylizeOptions, inputs: _Inputs, setup: _Setup, resume: dict | None, rec: _Recorder, device,
            interrupt: DeferredInterrupt) -> torch.Tensor:
    """Each scale from the first (or the checkpoint's) on, each starting from the last result."""
    n = len(o.scale_sizes)
    prev: torch.Tensor | None = None
    theta = None if setup.pairs is None else torch.zeros_like(setup.pairs[0])
    start = int(resume["scale"]) if resume else 0
    result = None
    for si in range(start, n):
        size, steps = o.scale_sizes[si], o.scale_steps[si]
        c, s, chroma = _scale_images(o, inputs, setup, size, device)
        po, joint = _optimizer(o, setup, c, s, prev, theta)
        if resume is not None and si == start:
            po.load_state_dict(resume["optimizer_state"])
            if po.step_count > steps:
                raise NSTError(f"checkpoint '{rec.ckpt_path}' is at step {po.step_count} of scale {si + 1}, "
                               f"past the {steps} steps asked for: resume with as many steps or more")
        finish = _finisher(chroma, joint, setup.pairs)
        _step_loop(o, po, si, steps, tuple(c.shape[-2:]), joint, setup.pairs, rec, interrupt, finish)
        best = po.result()
        prev, result = best, finish(best)
        if joint is not None:
            prev, theta = joint.split(best)
            if o.deform_debug and si == n - 1:
                pairs = setup.pairs
                draw_keypoints(resize_longest(inputs.content, size), resize_longest(inputs.style_images[0], size),
                               pairs[0].cpu(), pairs[1].cpu(), o.deform_debug,
                               grid=tps_grid(pairs[0].cpu(), theta.cpu(), tuple(result.shape[-2:])))
    return result


def _run_scales(o: StylizeOptions, inputs: _Inputs, device, callback) -> torch.Tensor:
    torch.manual_seed(o.seed)
    setup = _setup(o, inputs, device)
    resume = _resume_state(o, setup.settings)
    rec = _Recorder(o, setup.settings, list(resume["log"]) if resume else [], callback)
    with DeferredInterrupt() as interrupt:
        try:
            result = _scales(o, inputs, setup, resume, rec, device, interrupt)
            rec.status = "done"
        except KeyboardInterrupt:
            rec.status = "interrupted"
            raise
        except NSTError:
            rec.status = "failed"
            raise
        finally:
            try:
                rec.write_log()
            except NSTError as e:  # the run's own outcome (result or error) matters more: say it, go on
                warnings.warn(f"the log was not written: {e}", stacklevel=2)
    return result

