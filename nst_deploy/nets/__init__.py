"""Feed-forward style networks and their registry.

``create(name, **kw)`` builds a network by name; ``list_models()`` lists the names. Every network
takes RGB in ``[0, 1]`` as ``(N, 3, H, W)`` and returns RGB in ``[0, 1]``; ``net.config()`` returns
the keyword arguments that rebuild it (stored in checkpoints and exported metadata).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import NSTError

__all__ = ["create", "list_models", "register"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a network builder under ``name`` (lower case)."""
    _REGISTRY[name.lower()] = builder


def list_models() -> list[str]:
    """The registered network names."""
    return sorted(_REGISTRY)


def create(name: str, **kw) -> nn.Module:
    """Build the network ``name`` (see :func:`list_models`) with its keyword arguments.

    Raises:
        NSTError: unknown name or keyword arguments the network does not take.
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise NSTError(f"unknown network '{name}': choose one of {', '.join(list_models())}")
    try:
        return _REGISTRY[key](**kw)
    except TypeError as e:
        raise NSTError(f"network '{name}': {e}") from None
    except ValueError as e:
        raise NSTError(f"network '{name}': {e}") from None


def _johnson(**kw) -> nn.Module:
    from .transformer import TransformerNet

    return TransformerNet(**kw)


def _multimodal(**kw) -> nn.Module:
    from .multimodal import MultimodalNet

    return MultimodalNet(**kw)


def _multistyle(**kw) -> nn.Module:
    from .multistyle import MultiStyleNet

    return MultiStyleNet(**kw)


register("johnson", _johnson)
register("multistyle", _multistyle)
register("multimodal", _multimodal)
