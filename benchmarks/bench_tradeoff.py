"""Benchmark: the multistyle network against the per-style Johnson models at the same content ratio.

Issue 20 asks for the multistyle network "within 1.2x of the per-style models' style ratio at the same
content ratio". The two networks stop at different points of the style/content trade-off (a model that
takes more of the painting also loses more of the photo), so comparing their style ratios at full
strength mixes the two. Here, for each style of the bundled multistyle network that has a Johnson
model of the same painting, both are judged (:mod:`nst_deploy.quality`, the photos of
``bench_quality.py``); the one with the higher mean content ratio is then run at a lower ``strength``
(the run-time control of :mod:`nst_deploy.controls`, through the public ``Stylizer`` call), found by
false position, until its mean content ratio equals the other's; the style ratios are compared there.

Usage::

    python benchmarks/bench_tradeoff.py --paintings DIR --photos china.jpg [--size 384] [--styles NAME ...]

Results go to ``benchmarks/results/tradeoff-<device>.json``.
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


def match_strength(scores_at, target: float, full: dict, tol: float = 0.002, iters: int = 12) -> tuple[float, dict]:
    """The strength in [0, 1] at which ``scores_at(s)["content_ratio"]`` (the mean content ratio) is
    ``target``, and the scores there, by false position (Illinois) on [0, 1]: the content ratio grows with
    strength and is 0 at strength 0 (the photo itself); ``full`` is ``scores_at(1.0)``, already known.
    Full strength when it is already at or under ``target``; after ``iters`` steps the last point tried
    (its scores say how near it came)."""
    lo, flo = 0.0, -target
    hi, fhi = 1.0, full["content_ratio"] - target
    if fhi <= 0:
        return hi, full
    side = 0
    for _ in range(iters):
        mid = (lo * fhi - hi * flo) / (fhi - flo)
        scores = scores_at(mid)
        f = scores["content_ratio"] - target
        if abs(f) <= tol:
            break
        if f < 0:
            lo, flo = mid, f
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = mid, f
            if side == 1:
                flo /= 2
            side = 1
    return mid, scores


def compare(judge, nets: dict, photos: list) -> tuple[dict, dict]:
    """Mean style and content ratios of each of two Stylizers over ``photos`` at full strength, and with
    the one of higher content ratio run at the strength that brings it to the other's."""
    refs = [judge.prepare(p) for p in photos]

    def scores(which: str, strength: float) -> dict:
        s = [judge.score(nets[which](p, strength=strength), r) for p, r in zip(photos, refs, strict=True)]
        return {"style_ratio": sum(x.style_ratio for x in s) / len(s),
                "content_ratio": sum(x.content_ratio for x in s) / len(s)}

    full = {w: scores(w, 1.0) for w in nets}
    # the one that keeps less of the photo is brought back to the other's content ratio
    high = max(full, key=lambda w: full[w]["content_ratio"])
    (low,) = [w for w in nets if w != high]
    strength, at = match_strength(lambda s: scores(high, s), full[low]["content_ratio"], full[high])
    return full, {low: dict(full[low], strength=1.0), high: dict(at, strength=strength)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--styles", nargs="*", help="style names (default: every style with both models)")
    ap.add_argument("--photos", nargs="*", type=Path, default=[],
                    help="photographs to judge on besides chelsea and coffee (e.g. the held-out china.jpg)")
    ap.add_argument("--paintings", type=Path, help="the paintings' folder (scripts/fetch_paintings.sh)")
    ap.add_argument("--out-dir")
    args = ap.parse_args(argv)

    from nst_deploy.images import load_image
    from nst_deploy.models import bundled_models
    from nst_deploy.nets.io import read_model
    from nst_deploy.quality import Judge
    from nst_deploy.runtime import Stylizer

    models = bundled_models()
    multi = next((p for stem, p in models.items() if read_model(p)["arch"] == "multistyle"), None)
    if multi is None:
        print("no bundled multistyle model", file=sys.stderr)
        return 1
    styles = read_model(multi)["meta"]["styles"]
    photos = [load_image(p, size=args.size) for p in [DATA / p for p in PHOTOS] + list(args.photos)]
    photo_names = [p for p in PHOTOS] + [p.name for p in args.photos]
    rows: list[dict] = []
    with harness.keep_partial("tradeoff", rows, args.out_dir):
        for index, st in enumerate(styles):
            name = st["name"]
            johnson = models.get(f"johnson__{name}")
            if johnson is None or (args.styles and name not in args.styles):
                continue
            found = [d / st["file"] for d in (DATA, args.paintings) if d and (d / st["file"]).is_file()]
            if not found:
                print(f"skipping {name} ({st['file']}): not in {DATA} nor --paintings", file=sys.stderr)
                continue
            judge = Judge(load_image(found[0]), size=args.size)
            t0 = time.perf_counter()
            multi_net = Stylizer.load(multi, device="cpu")
            multi_net.style = index
            full, matched = compare(judge, {"johnson": Stylizer.load(johnson, device="cpu"), "multistyle": multi_net},
                                    photos)
            r = harness.row("tradeoff", name, list(photos[0].shape), "float32", "fp32", None, device="cpu",
                            style=found[0].name, photos=photo_names, size=args.size,
                            johnson_full=full["johnson"], multistyle_full=full["multistyle"],
                            johnson=matched["johnson"], multistyle=matched["multistyle"],
                            ratio_full=full["multistyle"]["style_ratio"] / full["johnson"]["style_ratio"],
                            ratio_matched=matched["multistyle"]["style_ratio"] / matched["johnson"]["style_ratio"],
                            seconds=time.perf_counter() - t0)
            harness.emit(r)
            rows.append(r)
    path = harness.write_results("tradeoff", rows, args.out_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
