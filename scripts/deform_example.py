"""The README's deformable-transfer example (docs/deform/).

The style image is the bundled cat deformed by a known smooth spline and painted by the bundled
Starry Night network, so it has both a style and a geometry of its own. ``nst stylize --deform``
then gives the photo the painting's style *and* its geometry; the same run without ``--deform`` is
shown beside it. Prints the keypoint error against the known deformation as JSON.

    python scripts/deform_example.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst_deploy.deform import tps_eval, tps_fit, warp  # noqa: E402
from nst_deploy.fsutil import atomic_write  # noqa: E402
from nst_deploy.images import load_image, save_image  # noqa: E402
from nst_deploy.nets.io import bundled_models, load_model  # noqa: E402
from nst_deploy.optimize import stylize  # noqa: E402

OUT = ROOT / "docs" / "deform"
SIZE = 256
BORDER = [[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]]
CTRL = torch.tensor([[-0.35, -0.3], [0.35, -0.3], [0.0, 0.45]] + BORDER, dtype=torch.float32)
MOVE = torch.tensor([[-0.12, -0.1], [0.12, -0.1], [0.0, 0.15]] + [[0, 0]] * 8, dtype=torch.float32)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    photo = load_image(ROOT / "nst_deploy" / "data" / "chelsea.jpg", size=SIZE)
    net, _ = load_model(bundled_models()["johnson__starry_night"])
    with torch.no_grad():
        painting = net(warp(photo, CTRL, MOVE)[0])
    save_image(painting, OUT / "style.jpg", quality=90)
    infos = []

    def progress(info):
        infos.append(info)
        if info.step % 10 == 0:
            print(f"step {info.step}: {info.seconds:.2f} s, loss {info.terms.total:.4g}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    out = stylize(photo, painting, size=SIZE, steps=80, deform=True, callback=progress, as_tensor=True,
                  deform_debug=str(OUT / "keypoints.png"))
    seconds = time.perf_counter() - t0
    plain = stylize(photo, painting, size=SIZE, steps=80, as_tensor=True)
    save_image(out, OUT / "deformed.jpg", quality=90)
    save_image(plain, OUT / "plain.jpg", quality=90)
    d = infos[-1].deform
    p, q, theta = d["points"].cpu(), d["targets"].cpu(), d["theta"].cpu()
    w, a = tps_fit(CTRL, CTRL + MOVE, ridge=1e-6)
    true = tps_eval(w, a, CTRL, p)
    report = {"size": SIZE, "steps": 80, "pairs": len(p), "seconds": round(seconds, 1),
              "point_error_before": float((p - true).norm(dim=1).mean()),
              "matched_error": float((q - true).norm(dim=1).mean()),
              "point_error_after": float((p + theta - true).norm(dim=1).mean())}
    with atomic_write(OUT / "example.json", "w") as fh:
        json.dump(report, fh, indent=1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
