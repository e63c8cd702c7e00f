"""``nst train``: the command line of :mod:`nst_deploy.train` (and of its distillation, :mod:`nst_deploy.distill`)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from .errors import NSTError
from .fsutil import check_writable
from .lossnets import LOSSNETS
from .nets import list_models
from .train import BALANCED_STYLE_WEIGHT, MIN_STYLE_SIDE, PRECISIONS, STYLE_WEIGHT, Trainer, TrainOptions

__all__ = ["add_train_parser", "cmd_train"]


def add_train_parser(sub) -> None:
    d = TrainOptions()
    p = sub.add_parser("train", help="train a feed-forward network for one style",
                       description="Train a feed-forward style network (Johnson or Multimodal) on a folder of "
                                   "photographs with the perceptual loss. Single process, or several with torchrun "
                                   "(DistributedDataParallel).")
    p.add_argument("--style", required=True, action="append",
                   help="the style image (--arch multistyle: repeat it, one per style)")
    p.add_argument("--add-to", dest="base", metavar="MODEL",
                   help="multistyle: add the --style images to this trained multistyle model as new styles "
                        "(only their instance-norm scales and shifts learn; the rest is kept)")
    p.add_argument("--init", metavar="MODEL",
                   help="johnson: start from this trained model's weights, not random ones (a Johnson model, or "
                        "one style of a multistyle model: its convolutions and that style's scales and shifts); "
                        "every weight learns")
    p.add_argument("--init-style", metavar="STYLE",
                   help="with a multistyle --init: the style to start from, by index or name (default 0)")
    p.add_argument("--teacher", metavar="MODEL",
                   help="johnson: first learn this trained model's outputs (its name or file; e.g. a bundled "
                        "model for a smaller --width), then the style (see --distill-steps)")
    p.add_argument("--distill-steps", type=int, default=0, metavar="N",
                   help="with --teacher: the first N of --steps learn the teacher's outputs (pixels and low "
                        "loss-network features), the rest the perceptual loss")
    p.add_argument("--distill-size", type=int, metavar="PX",
                   help="with --teacher: the crop size of the distillation steps (default --size)")
    p.add_argument("--data", required=True, help="folder of photographs (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="the model file to write (.pt)")
    p.add_argument("--arch", default=d.arch, help=f"network: {', '.join(list_models())} (default {d.arch})")
    p.add_argument("--width", type=float, default=d.width, help="width multiplier (default 1.0)")
    p.add_argument("--levels", type=int, default=d.levels, help="multimodal: levels trained (default 3)")
    p.add_argument("--size", type=int, default=d.size, help=f"training crop size (default {d.size})")
    p.add_argument("--style-size", type=int,
                   help=f"style image's longest side (default: --size, at least {MIN_STYLE_SIDE})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"global batch (default {d.batch})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--content-layers", default=d.content_layers, help=f"default {d.content_layers}")
    p.add_argument("--style-layers", default=d.style_layers, help=f"default {d.style_layers}")
    p.add_argument("--content-weight", type=float, default=d.content_weight, help="alpha (default 1)")
    p.add_argument("--style-weight", type=float,
                   help=f"beta (default {STYLE_WEIGHT:g}; {BALANCED_STYLE_WEIGHT:g} with --balance-style)")
    p.add_argument("--balance-style", action="store_true",
                   help="weigh each style layer by the painting's own Gram norm, so that every layer counts alike "
                        "(its squared relative Gram error)")
    p.add_argument("--tv-weight", type=float, default=d.tv_weight, help=f"default {d.tv_weight}")
    p.add_argument("--level-weights", default="1,0.5,0.25", help="multimodal: lambda_k (default 1,0.5,0.25)")
    p.add_argument("--min-crop", type=float, default=d.min_crop,
                   help=f"smallest crop side as a share of the photo's short side (default {d.min_crop})")
    p.add_argument("--net", default=d.net, choices=LOSSNETS, help="loss network (default vgg19)")
    p.add_argument("--weights", help="loss network weights (default: the bundled VGG19)")
    p.add_argument("--pooling", default=d.pooling, choices=("max", "avg"), help=f"loss network pooling ({d.pooling})")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere; fp16: the network in fp16 with a grad "
                        "scaler, the loss network in fp32 (the VGG19 activations overflow fp16)")
    p.add_argument("--device", default=d.device, help="auto (default: cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only: a resumed run ends where an uninterrupted one does on a GPU "
                        "too (slower there)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the weights and the data order ({d.seed})")
    p.add_argument("--workers", type=int, default=d.workers, help="data loading processes (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=f"steps between checkpoints in the workdir ({d.checkpoint_every})")
    p.add_argument("--sample-every", type=int, default=d.sample_every,
                   help=f"steps between sample pictures in the workdir ({d.sample_every})")
    p.add_argument("--log-every", type=int, default=d.log_every, help=f"steps between progress lines ({d.log_every})")
    p.add_argument("--workdir", help="checkpoint, samples and loss log (default: OUTPUT.train/)")
    p.add_argument("--resume", action="store_true", help="continue from the workdir's checkpoint")
    p.add_argument("--half", action="store_true", help="store the model's weights in fp16 (half the size)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    try:
        lw = [float(v) for v in args.level_weights.split(",")]
    except ValueError:
        raise NSTError(f"--level-weights '{args.level_weights}': expected numbers separated by commas") from None
    o = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)
                        if f.name not in ("level_weights", "style") and hasattr(args, f.name)}, level_weights=lw,
                     style=args.style[0] if len(args.style) == 1 else list(args.style))

    out = Path(args.output)
    if out.suffix.lower() not in (".pt", ".pth"):
        raise NSTError(f"cannot write '{out}': nst train writes a PyTorch model, name it .pt (nst-export makes "
                       "TorchScript and ONNX files from it)")
    check_writable(out, "model")
    from .progress import TrainProgress

    progress = None if args.quiet else TrainProgress(o.log_every, distill_steps=o.distill_steps)
    trainer = Trainer(o, out, resume=args.resume, progress=progress, half=args.half)
    try:
        path = trainer.run()
    except KeyboardInterrupt:
        if trainer.rank == 0:
            print(f"\nnst: interrupted at step {trainer.step}; checkpoint in '{trainer.workdir}': "
                  "continue with --resume", file=sys.stderr)
        return 130
    if trainer.rank == 0 and not args.quiet:
        print(f"wrote {path} ({trainer.step} steps)", file=sys.stderr)
    return 0
