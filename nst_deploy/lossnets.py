"""Loss networks: pretrained classifiers cut before their classifier, with named layers.

A :class:`LossNetwork` takes RGB images in ``[0, 1]``, applies the preprocessing its weights
expect (see :mod:`nst_deploy.weights`), and returns a dict of the requested layers, running only
as far as the deepest of them. Parameters are frozen: only the input takes gradients.

Layer names: VGG ``conv1_1 ... conv5_4``, ``relu1_1 ...``, ``pool1 ... pool5``; AlexNet
``conv1 ... conv5``, ``relu1 ...``, ``pool1``, ``pool2``, ``pool5``; GoogLeNet ``conv1``, ``pool1``,
``conv2``, ``conv3``, ``pool2``, ``inception3a`` ... ``inception5b`` (each GoogLeNet conv includes its
batch norm and ReLU, as in torchvision).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import LossNetError, WeightsError
from .weights import TORCHVISION, TORCHVISION_GOOGLENET, Preprocessing, Weights, load_weights

__all__ = ["LOSSNETS", "LossNetwork", "layer_info", "layer_names", "load_lossnet"]

LOSSNETS: tuple[str, ...] = ("vgg19", "vgg16", "alexnet", "googlenet")
POOLINGS = ("max", "avg")


def _pool(pooling: str, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> nn.Module:
    if pooling == "max":
        return nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    return nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)


def _vgg(blocks: tuple[int, ...], pooling: str) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = []
    cin = 3
    for b, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512, 512), strict=False), start=1):
        for i in range(1, n + 1):
            layers += [(f"conv{b}_{i}", nn.Conv2d(cin, cout, 3, padding=1)), (f"relu{b}_{i}", nn.ReLU())]
            cin = cout
        layers.append((f"pool{b}", _pool(pooling, 2, 2)))
    return layers


def _alexnet(pooling: str) -> list[tuple[str, nn.Module]]:
    spec = [
        (3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)
    ]
    layers: list[tuple[str, nn.Module]] = []
    for j, (cin, cout, k, s, p) in enumerate(spec, start=1):
        layers += [(f"conv{j}", nn.Conv2d(cin, cout, k, s, p)), (f"relu{j}", nn.ReLU())]
        if j in (1, 2, 5):
            layers.append((f"pool{j}", _pool(pooling, 3, 2)))
    return layers


class BasicConv2d(nn.Module):
    """conv (no bias) + batch norm (eps 1e-3) + ReLU, named as torchvision's GoogLeNet names them."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """GoogLeNet inception block; branch 3 uses a 3x3 conv, as torchvision's weights do."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj, pooling: str):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1), BasicConv2d(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1), BasicConv2d(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(_pool(pooling, 3, 1, 1, ceil_mode=True), BasicConv2d(cin, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def _googlenet(pooling: str) -> list[tuple[str, nn.Module]]:
    def inc(*args):
        return Inception(*args, pooling=pooling)

    return [
        ("conv1", BasicConv2d(3, 64, 7, stride=2, padding=3)),
        ("pool1", _pool(pooling, 3, 2, ceil_mode=True)),
        ("conv2", BasicConv2d(64, 64, 1)),
        ("conv3", BasicConv2d(64, 192, 3, padding=1)),
        ("pool2", _pool(pooling, 3, 2, ceil_mode=True)),
        ("inception3a", inc(192, 64, 96, 128, 16, 32, 32)),
        ("inception3b", inc(256, 128, 128, 192, 32, 96, 64)),
        ("pool3", _pool(pooling, 3, 2, ceil_mode=True)),
        ("inception4a", inc(480, 192, 96, 208, 16, 48, 64)),
        ("inception4b", inc(512, 160, 112, 224, 24, 64, 64)),
        ("inception4c", inc(512, 128, 128, 256, 24, 64, 64)),
        ("inception4d", inc(512, 112, 144, 288, 32, 64, 64)),
        ("inception4e", inc(528, 256, 160, 320, 32, 128, 128)),
        ("pool4", _pool(pooling, 2, 2, ceil_mode=True)),
        ("inception5a", inc(832, 256, 160, 320, 32, 128, 128)),
        ("inception5b", inc(832, 384, 192, 384, 48, 128, 128)),
    ]


_BUILDERS = {
    "vgg19": lambda pooling: _vgg((2, 2, 4, 4, 4), pooling),
    "vgg16": lambda pooling: _vgg((2, 2, 3, 3, 3), pooling),
    "alexnet": _alexnet,
    "googlenet": _googlenet,
}


def _check_arch(name: str, pooling: str) -> str:
    key = name.lower()
    if key not in _BUILDERS:
        raise LossNetError(f"unknown loss network '{name}': choose from {', '.join(LOSSNETS)}")
    if pooling not in POOLINGS:
        raise LossNetError(f"unknown pooling '{pooling}': choose max or avg")
    return key


class LossNetwork(nn.Module):
    """A frozen feature extractor with named layers.

    Call it as ``net(images, layers)``: ``images`` is RGB in ``[0, 1]``, shape ``(N, 3, H, W)``; the
    result maps each requested layer name to its activation. The forward pass stops at the deepest
    requested layer. Preprocessing (colour order, scale, mean/std) is applied inside, from the
    weights' own :class:`~nst_deploy.weights.Preprocessing`.
    """

    def __init__(self, arch: str, preprocessing: Preprocessing, pooling: str = "max", source: str = ""):
        super().__init__()
        self.arch = _check_arch(arch, pooling)
        self.pooling = pooling
        self.source = source
        self.preprocessing = preprocessing
        self.channels_last = False
        layers = _BUILDERS[self.arch](pooling)
        self.layer_names: tuple[str, ...] = tuple(n for n, _ in layers)
        self._index = {n: i for i, n in enumerate(self.layer_names)}
        for name, module in layers:
            self.add_module(name, module)
        p = preprocessing
        self.register_buffer("_mean", torch.tensor(p.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(p.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LossNetwork:
        """A loss network always stays in eval mode (batch norm uses its running statistics)."""
        return self

    def set_channels_last(self, enabled: bool = True) -> LossNetwork:
        """Store weights and run activations in channels_last memory format."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def truncate(self, layer: str) -> LossNetwork:
        """Drop every module after ``layer`` (frees their weights); later layers become unknown."""
        last = self._index[self.resolve(layer)[-1]]
        for name in self.layer_names[last + 1:]:
            delattr(self, name)
        self.layer_names = self.layer_names[: last + 1]
        self._index = {n: i for i, n in enumerate(self.layer_names)}
        return self

    def resolve(self, layers: Iterable[str] | str | None) -> list[str]:
        """Validate layer names (``None``: every layer), in network order."""
        if layers is None:
            return list(self.layer_names)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(dict.fromkeys(layers))
        unknown = [n for n in layers if n not in self._index]
        if unknown or not layers:
            raise LossNetError(
                f"{self.arch} has no layer {', '.join(map(repr, unknown)) or '(none requested)'}; "
                f"its layers are: {', '.join(self.layer_names)}"
            )
        return sorted(layers, key=self._index.__getitem__)

    def min_input_size(self, layers: Iterable[str] | str | None = None) -> int:
        """The smallest height and width for which the deepest of ``layers`` is at least 1x1."""
        deepest = self.resolve(layers)[-1]
        return min_input_size(self.arch, self.pooling, deepest)

    def check_image_size(self, hw: tuple[int, int], layers: Iterable[str] | str, what: str) -> None:
        """Refuse an image whose size as given (``(H, W)``; 0 when unknown: not checked) is below what
        the deepest of ``layers`` needs: resized up, it would hold too little to take statistics from."""
        names = self.resolve(layers)
        need = min_input_size(self.arch, self.pooling, names[-1])
        h, w = hw
        if 0 < min(h, w) < need:
            raise LossNetError(f"the {what} is {w}x{h} pixels; {self.arch}'s layers up to {names[-1]} need at "
                               f"least {need}x{need}: use a larger image")

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB ``[0, 1]`` to this network's input convention."""
        if self.preprocessing.bgr:
            x = x.flip(1)
        return (x * self.preprocessing.scale - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def forward(self, x: torch.Tensor, layers: Iterable[str] | str | None = None) -> dict[str, torch.Tensor]:
        wanted = self.resolve(layers)
        if x.dim() != 4 or x.shape[1] != 3:
            raise LossNetError(f"expected RGB images of shape (N, 3, H, W), got {tuple(x.shape)}")
        need = 1 if torch.compiler.is_compiling() else min_input_size(self.arch, self.pooling, wanted[-1])
        if min(x.shape[-2:]) < need:  # (under torch.compile the graph itself rejects small inputs)
            raise LossNetError(
                f"input {x.shape[-1]}x{x.shape[-2]} is too small for {self.arch} up to {wanted[-1]}: "
                f"it needs at least {need}x{need}"
            )
        keep = set(wanted)
        x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        previous = None
        for name in self.layer_names[: self._index[wanted[-1]] + 1]:
            module = self._modules[name]
            # A ReLU may overwrite the conv output before it when that output is not returned.
            inplace = isinstance(module, nn.ReLU) and previous not in keep
            x = F.relu(x, inplace=True) if inplace else module(x)
            if name in keep:
                out[name] = x
            previous = name
        return out


@functools.lru_cache(maxsize=256)
def _meta_net(arch: str, pooling: str) -> nn.Sequential:
    with torch.device("meta"):
        return nn.Sequential(OrderedDict(_BUILDERS[arch](pooling))).eval()


def _reaches(arch: str, pooling: str, layer: str, side: int) -> bool:
    net = _meta_net(arch, pooling)
    x = torch.empty(1, 3, side, side, device="meta")
    try:
        for name, module in net.named_children():
            x = module(x)
            if min(x.shape[-2:]) < 1:
                return False
            if name == layer:
                return True
    except (RuntimeError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=256)
def min_input_size(arch: str, pooling: str, layer: str) -> int:
    lo, hi = 1, 4096
    while lo < hi:  # reaching a layer is monotone in the input size
        mid = (lo + hi) // 2
        if _reaches(arch, pooling, layer, mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def layer_names(name: str = "vgg19") -> tuple[str, ...]:
    """The layer names of a loss network, in order."""
    key = _check_arch(name, "max")
    return tuple(n for n, _ in _meta_net(key, "max").named_children())


def layer_info(name: str = "vgg19", size: int = 224) -> list[tuple[str, int, int, int]]:
    """``(layer, channels, height, width)`` of every layer for a ``size`` x ``size`` input."""
    key = _check_arch(name, "max")
    x = torch.empty(1, 3, size, size, device="meta")
    rows = []
    for layer, module in _meta_net(key, "max").named_children():
        x = module(x)
        rows.append((layer, x.shape[1], x.shape[2], x.shape[3]))
    return rows


def _assign(net: LossNetwork, weights: Weights) -> None:
    """Strict load: every key present, every shape right; errors name the keys."""
    expected = net.state_dict()
    sd = dict(weights.state_dict)
    for key in expected:  # older checkpoints lack batch-norm counters
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if extra:
            parts.append(f"unexpected keys {', '.join(extra[:10])}" + (" ..." if len(extra) > 10 else ""))
        raise WeightsError(f"{weights.source} does not fit {net.arch}: {'; '.join(parts)}")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise WeightsError(
                f"{weights.source} does not fit {net.arch}: {key} has shape {tuple(sd[key].shape)}, "
                f"expected {tuple(ref.shape)}"
            )
        if sd[key].is_floating_point() != ref.is_floating_point():
            raise WeightsError(f"{weights.source}: {key} has dtype {sd[key].dtype}, expected {ref.dtype}")
    net.load_state_dict({k: sd[k].to(ref.dtype) for k, ref in expected.items()}, strict=True, assign=True)
    net.requires_grad_(False)


def load_lossnet(
    name: str = "vgg19",
    weights: str | os.PathLike | Weights | None = None,
    *,
    pooling: str = "max",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> LossNetwork:
    """Build a loss network with pretrained weights.

    Args:
        name: ``vgg19`` (default), ``vgg16``, ``alexnet`` or ``googlenet``.
        weights: ``None``/``"bundled"`` (the bundled VGG19), ``"torchvision"`` (torchvision's
            pretrained loader), a path to a torchvision-format state dict, a
            :class:`~nst_deploy.weights.Weights`, or ``"random"`` (seeded random initialization, for
            tests and benchmarks only: it does not give meaningful style transfer).
        pooling: ``max`` or ``avg`` (avg replaces every max pool, as Gatys et al. suggest).
        device, dtype: where the network runs.
        channels_last: use the channels_last memory format.

    Raises:
        LossNetError: unknown network or pooling.
        WeightsError: missing, unreadable, unsafe or mismatched weights.
    """
    key = _check_arch(name, pooling)
    if isinstance(weights, str) and weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            prep = TORCHVISION_GOOGLENET if key == "googlenet" else TORCHVISION
            net = LossNetwork(key, prep, pooling, source=f"random {key}")
    else:
        w = weights if isinstance(weights, Weights) else load_weights(key, weights)
        if w.arch != key:
            raise WeightsError(f"{w.source} holds {w.arch} weights, not {key}")
        with torch.device("meta"):
            net = LossNetwork(key, w.preprocessing, pooling, source=w.source)
        net._mean = torch.tensor(w.preprocessing.mean).view(1, 3, 1, 1)
        net._std = torch.tensor(w.preprocessing.std).view(1, 3, 1, 1)
        _assign(net, w)
    net = net.to(device=device, dtype=dtype)
    if channels_last:
        net.set_channels_last(True)
    return net
