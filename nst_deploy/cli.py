"""The ``nst`` command line.

Every subcommand is a function ``cmd_<name>(args) -> int``; errors a user can cause are
:class:`~nst_deploy.errors.NSTError` and end as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .cli_run import add_run
from .cli_serve import add_serve
from .errors import NSTError

__all__ = ["build_parser", "main"]


def cmd_layers(args: argparse.Namespace) -> int:
    from .errors import LossNetError
    from .lossnets import layer_info, layer_names, min_input_size

    need = min_input_size(args.net, "max", layer_names(args.net)[-1])
    if args.size < need:
        raise LossNetError(f"--size {args.size} is too small for {args.net}: use at least {need}")
    rows = layer_info(args.net, args.size)
    print(f"{args.net}: {len(rows)} layers (activation shapes for a {args.size}x{args.size} input)")
    print(f"{'layer':<14}{'channels':>9}{'size':>12}{'min input':>11}")
    for name, c, h, w in rows:
        print(f"{name:<14}{c:>9}{f'{h}x{w}':>12}{min_input_size(args.net.lower(), 'max', name):>11}")
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


DATA_DIR = Path(__file__).resolve().parent / "data"
#: The bundled demo: what ``nst stylize`` runs with no images (about 100 s on a 2-core CPU).
DEMO = {"size": 384, "scales": [192, 384], "steps": [100, 80], "output": "nst-demo.png"}


def _comma_list(text: str, cast, what: str, one: str) -> list:
    """``"a,b,..."`` as a list of ``cast`` values (argparse errors name ``what``, or ``one`` of them)."""
    try:
        parts = [cast(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, not '{text}'") from None
    if not parts:
        raise argparse.ArgumentTypeError(f"expected at least one {one}")
    return parts


def _ints(text: str) -> int | list[int]:
    """``"200"`` or ``"100,50"``."""
    parts = _comma_list(text, int, "an integer or integers", "integer")
    return parts[0] if len(parts) == 1 and "," not in text else parts


#: StylizeOptions fields that are not one flag each: style layers are per style (handled with the
#: styles), the scale sizes and steps are derived from --size, --scales and --steps.
_NOT_FLAGS = ("style_layers", "scale_sizes", "scale_steps")


def _floats(text: str) -> list[float]:
    """``"1,0.5"``."""
    return _comma_list(text, float, "numbers", "number")


def _per_style(values: list | None, n: int, what: str) -> list:
    if not values:
        return [None] * n
    if len(values) != n:
        raise NSTError(f"{len(values)} {what} for {n} style{'s' if n > 1 else ''}: give one per style, in the "
                       "order of --style")
    return list(values)


def _styles_from(args: argparse.Namespace, values: dict) -> tuple[list, dict]:
    """The styles of a run, from the flags (``--style`` repeated) or the recipe (``style``, ``[[styles]]``)."""
    from .styles import Style

    recipe_styles = values.pop("styles", None)
    recipe_style = values.pop("style", None)
    if args.style:
        specs = [{"image": p} for p in args.style]
    elif recipe_styles is not None:
        specs = [dict(d) for d in recipe_styles]
    elif recipe_style is not None:
        specs = [{"image": p} for p in (recipe_style if isinstance(recipe_style, list) else [recipe_style])]
    else:
        return [], values
    n = len(specs)
    for key, given, what in (("weight", args.style_weights, "style weights"), ("mask", args.mask, "masks"),
                             ("style_mask", args.style_mask, "style masks")):
        for spec, v in zip(specs, _per_style(given, n, what), strict=True):
            if v is not None:
                spec[key] = v
    layers = args.style_layers or []
    if len(layers) == 1:
        values["style_layers"] = layers[0]  # one set: the style layers (cut into segments for several styles)
    else:
        for spec, v in zip(specs, _per_style(layers, n, "--style-layers"), strict=True):
            if v is not None:
                spec["layers"] = v
    for i, spec in enumerate(specs, 1):
        for key in ("image", "mask", "style_mask"):
            p = spec.get(key)
            if p is not None and not Path(p).is_file():
                what = {"image": "style image", "mask": "mask", "style_mask": "style mask"}[key]
                why = "is a folder, not an image" if Path(p).is_dir() else "does not exist"
                raise NSTError(f"{what}{f' {i}' if n > 1 else ''} '{p}' {why}")
    return [Style(**spec) for spec in specs], values


def cmd_stylize(args: argparse.Namespace) -> int:
    from .images import check_output, save_image
    from .optimize import StylizeOptions, stylize
    from .recipes import read_recipe

    values: dict = {}
    if args.recipe:
        values.update(read_recipe(args.recipe))
    from dataclasses import fields

    for name in (f.name for f in fields(StylizeOptions) if f.name not in _NOT_FLAGS):
        v = getattr(args, name)
        if v is not None and v is not False:
            values[name] = v
    if args.line_search == "none":
        values["line_search"] = None
    content = args.content or values.pop("content", None)
    values.pop("content", None)
    demo = content is None and not args.style and "style" not in values and "styles" not in values
    if demo:
        if args.mask or args.style_mask or args.style_weights:
            raise NSTError("masks and style weights need content and style images")
        content, args.style = DATA_DIR / "chelsea.jpg", [str(DATA_DIR / "starry_night.jpg")]
    styles, values = _styles_from(args, values)
    output = args.output or values.pop("output", None)
    values.pop("output", None)
    if demo:
        if not any(k in values for k in ("size", "scales", "steps")):  # the demo's own schedule
            values.update({k: DEMO[k] for k in ("size", "scales", "steps")})
        output = output or DEMO["output"]
        print(f"nst: no images given: the bundled demo ({Path(content).name} in the style of "
              f"{Path(styles[0].image).name}) -> {output}", file=sys.stderr)
    elif content is None:
        raise NSTError("give a content image (or neither image, for the bundled demo)")
    elif not styles:
        raise NSTError("give a style image with --style (or neither image, for the bundled demo)")
    if output is None:
        output = f"{Path(content).stem}-{'-'.join(Path(st.image).stem for st in styles)}.png"
    output = Path(output)
    check_output(output, content, *(st.image for st in styles), quality=args.quality)
    if not Path(content).is_file():
        why = "is a folder, not an image" if Path(content).is_dir() else "does not exist"
        raise NSTError(f"content image '{content}' {why}")
    opts = StylizeOptions().update(**values)
    o = opts.resolved()
    from .progress import Progress

    progress = None if args.quiet else Progress(o.scale_steps, o.scale_sizes)
    t0 = time.perf_counter()
    last = {}

    def callback(info):
        last["terms"] = info.terms
        if progress is not None:
            progress(info)

    try:
        result = stylize(content, styles if len(styles) > 1 else styles[0], opts, callback=callback, as_tensor=True)
    except KeyboardInterrupt:
        if o.checkpoint and Path(o.checkpoint).is_file():
            print(f"nst: interrupted; checkpoint in '{o.checkpoint}': run the same command with --resume "
                  "to go on", file=sys.stderr)
        elif o.checkpoint:
            print("nst: interrupted before the first step (no checkpoint written yet)", file=sys.stderr)
        else:
            print("nst: interrupted (nothing saved; --checkpoint FILE makes a run resumable)", file=sys.stderr)
        return 130
    save_image(result, output, bits=args.bits, quality=args.quality)
    terms = last.get("terms")
    loss = f", final loss {terms.total:.4g}" if terms is not None and math.isfinite(terms.total) else ""
    if not args.quiet:
        print(f"nst: wrote {output} ({result.shape[-1]}x{result.shape[-2]}, {sum(o.scale_steps)} steps in "
              f"{time.perf_counter() - t0:.1f} s{loss})", file=sys.stderr)
    return 0


def _add_stylize(sub) -> None:
    from .lossnets import LOSSNETS
    from .optimize import INITS, OPTIMIZERS
    from .presets import PRESETS

    p = sub.add_parser(
        "stylize",
        help="stylize an image by optimizing its pixels (Gatys et al.); no images: the bundled demo",
        description="Stylize CONTENT with STYLE by optimizing the output's pixels on a loss network. "
        "With no images, runs the bundled demo and writes nst-demo.png. Options not given come from "
        "--recipe, then from --preset.",
    )
    p.add_argument("content", nargs="?", help="content image (PNG, JPEG, WEBP, TIFF, BMP)")
    p.add_argument("--style", "-s", action="append", help="style image; repeat for several styles (hierarchical "
                   "layer segments by default, see --multi-style, --mask)")
    p.add_argument("--output", "-o", help="output image: .png (8 or 16 bit), .jpg or .tif "
                   "(default CONTENT-STYLE.png; the demo writes nst-demo.png)")
    p.add_argument("--recipe", help="TOML file with any of these options (and content, style, output)")
    g = p.add_argument_group("method")
    g.add_argument("--preset", choices=list(PRESETS), help="layers, weights, optimizer and init of a paper "
                   "(default gatys)")
    g.add_argument("--content-layers", help="e.g. conv4_2 or conv3_2:0.5,conv4_2:0.5 ('' for none)")
    g.add_argument("--style-layers", action="append", help="e.g. conv1_1,conv2_1,conv3_1,conv4_1,conv5_1 "
                   "(name:weight allowed); once: the style layers, or once per style: each style's own")
    g.add_argument("--content-weight", type=float, help="alpha (preset default 1)")
    g.add_argument("--style-weight", type=float, help="beta (preset default 1e3 for gatys)")
    g.add_argument("--tv-weight", type=float, help="total-variation weight (default 0)")
    g.add_argument("--style-rep", choices=("gram", "autocorr", "local"), help="style statistic: gram (default), "
                   "autocorr (per-channel spatial autocorrelation) or local (localized Gram, aligned images)")
    g.add_argument("--window", type=int, help="localized Gram window s (style-rep local; default 0, pixel-wise)")
    g = p.add_argument_group("several styles")
    g.add_argument("--style-weights", type=_floats, help="one relative weight per style, e.g. 0.7,0.3 "
                   "(beta, --style-weight, multiplies them all)")
    g.add_argument("--multi-style", choices=("hierarchical", "blend"), help="hierarchical (default: each style "
                   "on its own segment of the style layers) or blend (every style on every layer, mixed by weight)")
    g.add_argument("--mask", action="append", help="where on the output a style applies (an image, white = "
                   "this style); one per style, masks normalized to sum to 1")
    g.add_argument("--style-mask", action="append", help="which part of a style image gives its statistics; "
                   "one per style")
    g.add_argument("--net", choices=LOSSNETS, help="loss network (vgg19)")
    g.add_argument("--weights", help="loss-network weights: bundled (vgg19 default), torchvision, or a file")
    g.add_argument("--pooling", choices=("max", "avg"), help="pooling in the loss network (max)")
    g = p.add_argument_group("deformable transfer (Kim et al. 2020): the output also takes the style's geometry")
    g.add_argument("--deform", action="store_true", help="optimize a thin-plate-spline warp with the pixels")
    g.add_argument("--keypoints", help="JSON or CSV file of keypoint pairs (content x,y -> style x,y in pixels) "
                                       "instead of matching them")
    g.add_argument("--k", type=int, help="keypoint pairs to match (default 80)")
    g.add_argument("--warp-weight", type=float, help="weight of the keypoint term (default 5, relative to the "
                                                     "content image's own loss)")
    g.add_argument("--flow-tv", type=float, help="weight of the flow smoothness term (default 0.1)")
    g.add_argument("--deform-debug", help="write a picture of the matched keypoints and the warp grid (PNG)")
    g = p.add_argument_group("image")
    g.add_argument("--size", type=int, help="longest side of the output in pixels (default 256)")
    g.add_argument("--scales", type=_ints, help="coarse-to-fine: a number of scales (each twice the last) "
                   "or sizes, e.g. 128,256,512")
    g.add_argument("--style-scale", type=float, help="style image size relative to the output (default 1)")
    g.add_argument("--preserve-color", action="store_true", help="luminance-only transfer; keep the content's "
                   "colours")
    g.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    g.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=_ints, help="steps (per scale; or one per scale: 100,50) (default 200)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="lbfgs (default), adam or sgd")
    g.add_argument("--lr", type=float, help="learning rate (lbfgs 1, adam 0.02, sgd 1e-4)")
    g.add_argument("--init", help=f"{', '.join(INITS)} or an image path (preset default content)")
    g.add_argument("--lbfgs-history", type=int, help="L-BFGS history size (default 100)")
    g.add_argument("--line-search", choices=("strong_wolfe", "none"), help="L-BFGS line search (default none)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--seed", type=int, help="seed for the noise init and everything random (default 0)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (slower on GPU)")
    g = p.add_argument_group("run")
    g.add_argument("--save-every", type=int, help="save the image every N steps into --workspace")
    g.add_argument("--workspace", help="folder for --save-every images")
    g.add_argument("--log-json", help="write the per-step losses to this JSON file")
    g.add_argument("--checkpoint", help="checkpoint file (pixels and optimizer state), written atomically")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 50)")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_stylize)


def _add_layers(sub) -> None:
    from .lossnets import LOSSNETS

    p = sub.add_parser("layers", help="list a loss network's layer names")
    p.add_argument("--net", default="vgg19", choices=LOSSNETS)
    p.add_argument("--size", type=int, default=224, help="input size for the shapes shown (default 224)")
    p.set_defaults(func=cmd_layers)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, devices and the bundled weights")
    p.set_defaults(func=cmd_info)


def _add_synth(sub) -> None:
    from .synth import add_synth_parser

    add_synth_parser(sub)


def _add_train(sub) -> None:
    from .cli_train import add_train_parser

    add_train_parser(sub)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``nst``; ``only``: just that command's (``nst run`` must not wait for torch, which
    the other commands' parsers import)."""
    parser = _Parser(
        prog="nst",
        description="Neural style transfer: per-image optimization, feed-forward networks, export.",
    )
    parser.add_argument("--version", action="version", version=f"nst-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, add in _COMMANDS.items():
        if only is None or only == name:
            add(sub)
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage errors as two lines (the error, where the options are listed), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists the options)\n")


#: The commands, in the order ``nst --help`` lists them, and what adds each one's parser.
_COMMANDS = {"layers": _add_layers, "info": _add_info, "stylize": _add_stylize, "synth": _add_synth,
             "train": _add_train, "run": add_run, "serve": add_serve}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argv[0] if argv else None
    try:  # building a parser may import torch (seconds): Ctrl-C then is an interrupt like any other
        parser = build_parser(only=first if first in _COMMANDS else None)
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    old_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"\nnst: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
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
    finally:
        warnings.showwarning = old_show


if __name__ == "__main__":
    raise SystemExit(main())
