"""``nst-export``: export a trained feed-forward network to TorchScript and ONNX."""

from __future__ import annotations

import argparse
import sys

from .. import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nst-export",
        description="Export a trained feed-forward style network to TorchScript and ONNX, verified "
        "against eager PyTorch.",
    )
    p.add_argument("--version", action="version", version=f"nst-deploy {__version__}")
    p.add_argument("model", help="a checkpoint written by 'nst train'")
    p.add_argument("-o", "--output", required=True, help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"nst-export: error: cannot export '{args.model}': this version has no trained feed-forward "
        "networks to export yet",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
