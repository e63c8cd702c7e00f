"""Benchmark: how stylized, faithful and clean the bundled models' pictures are (nst_deploy.quality).

For each bundled model and each photograph it never saw in training (``chelsea`` and ``coffee``; the
bundled models were trained on the other sample photographs), the measures of
:mod:`nst_deploy.quality` at ``--size``: style ratio (VGG19 Gram distance to the painting over the
photo's own), content ratio (relu4_2 distance to the photo over the painting's), palette ratio (sliced
Wasserstein in Lab) and border ratio (mean gradient in an 8-pixel border band over the interior; the
photo's own beside it). With ``--optimize-steps N`` a per-image optimization (the Gatys preset, N
L-BFGS steps) of the same photo and painting is scored too, as the reference for what the loss can reach.
A multistyle model is scored on each of its styles, against its painting (found in ``nst_deploy/data`` or
``--paintings``, the folder of ``scripts/fetch_paintings.sh``).

Usage::

    python benchmarks/bench_quality.py [--size 384] [--optimize-steps 0] [--out-dir DIR]

Results go to ``benchmarks/results/quality-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import harness  # noqa: E402

DATA = ROOT / "nst_deploy" / "data"
PHOTOS = ("chelsea.jpg", "coffee.jpg")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--optimize-steps", type=int, default=0)
    ap.add_argument("--models", nargs="*", help="bundled model names (default: all)")
    ap.add_argument("--files", nargs="*", type=Path, default=[],
                    help="model files of nst train to score instead (their style image: --style)")
    ap.add_argument("--style", type=Path, help="the painting of --files")
    ap.add_argument("--photos", nargs="*", type=Path, default=[],
                    help="photographs to judge on besides chelsea and coffee (e.g. the training folder's "
                         "held-out china.jpg, which scripts/fetch_training_photos.sh collects)")
    ap.add_argument("--paintings", type=Path, help="the paintings' folder (scripts/fetch_paintings.sh): the "
                                                  "paintings the package does not hold")
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)
    from nst_deploy.images import load_image
    from nst_deploy.models import bundled_models
    from nst_deploy.nets.io import read_model
    from nst_deploy.optimize import stylize
    from nst_deploy.quality import Judge
    from nst_deploy.runtime import Stylizer

    rows: list[dict] = []
    if args.files:
        if args.style is None:
            ap.error("--files needs --style")
        todo = [(p.stem, p, args.style, None) for p in args.files]
    else:
        todo = []
        for stem, path in bundled_models().items():
            name, meta = stem.split("__", 1)[-1], read_model(path)["meta"]
            if args.models and name not in args.models:
                continue
            # a multistyle model: each style against its painting
            styles = meta.get("styles") or [{"file": meta["style"], "name": None}]
            for i, st in enumerate(styles):
                found = [d / st["file"] for d in (DATA, args.paintings) if d and (d / st["file"]).is_file()]
                if not found:
                    print(f"skipping {name} ({st['file']}): not in {DATA} nor --paintings", file=sys.stderr)
                    continue
                if st["name"] is None:
                    todo.append((name, path, found[0], None))
                else:
                    todo.append((f"{name}[{st['name']}]", path, found[0], i))
    with harness.keep_partial("quality", rows, args.out_dir):
        for name, path, style_file, index in todo:
            judge = Judge(load_image(style_file), size=args.size)
            model = Stylizer.load(path, device="cpu")
            if index is not None:
                model.style = index
            for photo_path in [DATA / p for p in PHOTOS] + list(args.photos):
                photo_name = photo_path.name
                photo = load_image(photo_path, size=args.size)
                outputs = {f"model {name}": lambda m=model, p=photo: m(p)}
                if args.optimize_steps:
                    outputs[f"optimization ({args.optimize_steps} L-BFGS steps)"] = (
                        lambda p=photo, f=style_file: stylize(p, f, size=args.size, steps=args.optimize_steps,
                                                              device="cpu", as_tensor=True))
                for what, make in outputs.items():
                    t0 = time.perf_counter()
                    out = make()
                    seconds = time.perf_counter() - t0
                    s = judge.score(out, photo)
                    r = harness.row("quality", what, list(photo.shape), "float32", "fp32", None, device="cpu",
                                    style=style_file.name, photo=photo_name, seconds=seconds, **s.as_dict())
                    harness.emit(r)
                    rows.append(r)
    path = harness.write_results("quality", rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
