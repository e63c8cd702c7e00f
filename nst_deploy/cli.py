"""The ``nst`` command line.

Every subcommand is a function ``cmd_<name>(args) -> int``; errors a user can cause are
:class:`~nst_deploy.errors.NSTError` and end as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__
from .errors import NSTError

__all__ = ["build_parser", "main"]


def cmd_layers(args: argparse.Namespace) -> int:
    from .errors import LossNetError
    from .lossnets import _min_input_size, layer_info, layer_names

    need = _min_input_size(args.net, "max", layer_names(args.net)[-1])
    if args.size < need:
        raise LossNetError(f"--size {args.size} is too small for {args.net}: use at least {need}")
    rows = layer_info(args.net, args.size)
    print(f"{args.net}: {len(rows)} layers (activation shapes for a {args.size}x{args.size} input)")
    print(f"{'layer':<14}{'channels':>9}{'size':>12}{'min input':>11}")
    for name, c, h, w in rows:
        print(f"{name:<14}{c:>9}{f'{h}x{w}':>12}{_min_input_size(args.net.lower(), 'max', name):>11}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import importlib.util

    import torch

    from .kernels import has_triton
    from .weights import bundled_vgg19_path

    print(f"nst-deploy {__version__}")
    print(f"python      {platform.python_version()} ({platform.machine()})")
    print(f"torch       {torch.__version__}")
    print(f"cuda        {torch.cuda.is_available() and torch.cuda.get_device_name(0) or 'not available'}")
    print(f"triton      {'available' if has_triton() else 'not installed'}")
    tv = importlib.util.find_spec("torchvision") is not None
    print(f"torchvision {'installed' if tv else 'not installed (optional)'}")
    try:
        print(f"weights     {bundled_vgg19_path()}")
    except NSTError as e:
        print(f"weights     missing: {e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst",
        description="Neural style transfer: per-image optimization, feed-forward networks, export.",
    )
    parser.add_argument("--version", action="version", version=f"nst-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("layers", help="list a loss network's layer names")
    p.add_argument("--net", default="vgg19", choices=("vgg19", "vgg16", "alexnet", "googlenet"))
    p.add_argument("--size", type=int, default=224, help="input size for the shapes shown (default 224)")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("info", help="versions, devices and the bundled weights")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except NSTError as e:
        print(f"nst: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head and the like
        return 0
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
