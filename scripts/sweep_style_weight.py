"""Choose a painting's style weight by a short training sweep judged on held-out photographs, then train on.

    python scripts/sweep_style_weight.py --style PAINTING --data PHOTOS --workdir DIR \
        [--weights 1e-5 2e-5 4e-5] [--sweep-steps 200] [--steps 1500] [--holdout china.jpg] -o MODEL.pt

Every candidate style weight trains ``--sweep-steps`` steps (``nst train`` options otherwise the same:
``--size``, ``--width``, ``--batch``, ``--lr``) in its own work folder under ``--workdir``. Each is judged
(:class:`nst_deploy.quality.Judge`, at 384 px) on photographs none of them trained on: the package's
``chelsea`` and ``coffee`` and the ``--holdout`` files of ``--data``, which are left out of training.
The pick: the lowest mean style ratio among candidates whose mean content ratio is at most
``--max-content`` (default 0.85, issue 20's bound), else the lowest content ratio. The picked
candidate then resumes from its checkpoint to ``--steps``: the sweep's steps are not lost. Everything
is resumable: a candidate already trained (its model file present) is judged, not trained again, and
``--steps`` resumes the picked one where it stopped.

Writes ``-o`` (the model), ``<workdir>/sweep.json`` (every candidate's figures and the pick).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst_deploy.fsutil import atomic_write  # noqa: E402
from nst_deploy.images import load_image  # noqa: E402
from nst_deploy.photos import IMAGE_SUFFIXES  # noqa: E402
from nst_deploy.quality import Judge  # noqa: E402
from nst_deploy.runtime import Stylizer  # noqa: E402
from nst_deploy.train import Trainer, TrainOptions  # noqa: E402

DATA = ROOT / "nst_deploy" / "data"
PACKAGE_PHOTOS = [DATA / "chelsea.jpg", DATA / "coffee.jpg"]


def training_folder(data: Path, holdout: list[str], work: Path) -> Path:
    """A folder of links to every photo of ``data`` except the held-out names."""
    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(data.iterdir()):
        link = folder / p.name
        if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in holdout and not link.exists():
            os.symlink(p.resolve(), link)
    return folder


def write_json(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=1)


def judge(model: Path, judge_: Judge, photos: list[Path], size: int) -> dict:
    s = Stylizer.load(model, device="cpu")
    rows = []
    for p in photos:
        photo = load_image(p, size=size)
        out = s(photo)
        sc = judge_.score(out, photo)
        rows.append({"photo": p.name, **{k: round(float(v), 4) for k, v in vars(sc).items()}})
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0] if k != "photo"}
    return {"photos": rows, "mean": mean}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=[1e-5, 2e-5, 4e-5])
    ap.add_argument("--sweep-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--holdout", nargs="*", default=["china.jpg"])
    ap.add_argument("--max-content", type=float, default=0.85)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--judge-size", type=int, default=384)
    ap.add_argument("--style-layers", default=TrainOptions.style_layers, help="nst train's --style-layers")
    ap.add_argument("--content-layers", default=TrainOptions.content_layers, help="nst train's --content-layers")
    ap.add_argument("--balance-style", action="store_true", help="nst train's --balance-style")
    ap.add_argument("--init", help="nst train's --init: every candidate starts from this model's weights")
    ap.add_argument("--init-style", help="nst train's --init-style (a style of a multistyle --init)")
    args = ap.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    photos = training_folder(args.data, args.holdout, args.workdir)
    judged_on = PACKAGE_PHOTOS + [args.data / h for h in args.holdout]
    judge_ = Judge(load_image(args.style), size=args.judge_size)

    def options(weight: float, steps: int, work: Path) -> TrainOptions:
        return TrainOptions(style=str(args.style), data=str(photos), size=args.size, width=args.width,
                            batch=args.batch, lr=args.lr, style_weight=weight, steps=steps, workdir=str(work),
                            style_layers=args.style_layers, content_layers=args.content_layers,
                            balance_style=args.balance_style, init=args.init, init_style=args.init_style,
                            checkpoint_every=50, sample_every=10**9, log_every=10)

    record = {"style": args.style.name, "holdout": args.holdout, "judged_on": [p.name for p in judged_on],
              "sweep_steps": args.sweep_steps, "size": args.size, "width": args.width, "batch": args.batch,
              "lr": args.lr, "style_layers": args.style_layers, "content_layers": args.content_layers,
              "balance_style": args.balance_style, "candidates": []}
    if args.init:
        record.update(init=Path(args.init).name, init_style=args.init_style)
    for w in args.weights:
        work = args.workdir / f"w{w:g}"
        model = args.workdir / f"w{w:g}.pt"
        if not model.is_file():
            resume = (work / "checkpoint.pt").is_file()
            Trainer(options(w, args.sweep_steps, work), model, resume=resume).run()
        scores = judge(model, judge_, judged_on, args.judge_size)
        record["candidates"].append({"style_weight": w, **scores})
        print(f"style weight {w:g}: {scores['mean']}", flush=True)

    ok = [c for c in record["candidates"] if c["mean"]["content_ratio"] <= args.max_content]
    pick = (min(ok, key=lambda c: c["mean"]["style_ratio"]) if ok
            else min(record["candidates"], key=lambda c: c["mean"]["content_ratio"]))
    record["pick"] = pick["style_weight"]
    record["pick_rule"] = (f"lowest style ratio with content ratio <= {args.max_content}" if ok
                           else f"no candidate reached content ratio <= {args.max_content}: the lowest content ratio")
    print(f"picked style weight {record['pick']:g} ({record['pick_rule']})", flush=True)
    write_json(args.workdir / "sweep.json", record)

    if args.steps > args.sweep_steps:
        w = record["pick"]
        Trainer(options(w, args.steps, args.workdir / f"w{w:g}"), args.output, resume=True).run()
        record["final"] = {"steps": args.steps, **judge(args.output, judge_, judged_on, args.judge_size)}
        print(f"final ({args.steps} steps): {record['final']['mean']}", flush=True)
        write_json(args.workdir / "sweep.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
