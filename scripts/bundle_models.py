"""Package trained models for the repository: model file, training record, loss curve, before/after.

    python scripts/bundle_models.py MODEL.pt [MODEL.pt ...] --data DIR --command-file CMD.txt
    python scripts/bundle_models.py --onnx-only nst_deploy/data/models/*.pt   # the ONNX copies alone

For each model (written by ``nst train`` with ``--half``; its work folder ``MODEL.pt.train`` beside
it) this writes

* ``nst_deploy/data/models/<name>.pt``: the model (fp16 weights);
* ``nst_deploy/data/models/<name>.int8.onnx``: its int8 form (``nst-export --int8``: verified, its quality drop
  measured and bounded), what ``nst run <name>`` runs on the CPU, without torch;
* ``nst_deploy/data/models/<name>.json``: the exact command, the training photographs with their
  sha256, the options, and the loss curve (every logged step);
* ``docs/models/<name>-loss.png``: the loss curve;
* ``docs/models/<name>-<photo>.jpg``: before/after pictures on photographs the model never saw.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst_deploy.fsutil import atomic_write, sha256_file  # noqa: E402
from nst_deploy.images import load_image, save_image  # noqa: E402
from nst_deploy.nets.io import load_model, read_model  # noqa: E402
from nst_deploy.nets.multistyle import style_vector  # noqa: E402

MODELS = ROOT / "nst_deploy" / "data" / "models"
DOCS = ROOT / "docs" / "models"
#: Photographs none of the bundled models saw in training (held out of the training folder).
UNSEEN = [ROOT / "nst_deploy" / "data" / "chelsea.jpg", ROOT / "nst_deploy" / "data" / "coffee.jpg"]


def loss_curve(history: list[dict], path: Path, title: str) -> None:
    """A plain line plot of the total, content and style terms (log scale) with Pillow."""
    w, h, pad = 640, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    steps = [r["step"] for r in history]
    keys = [("total", (0, 0, 0)), ("content", (30, 90, 200)), ("style", (200, 60, 30))]
    vals = [max(r[k], 1e-12) for r in history for k, _ in keys]
    import math

    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1

    def xy(step, v):
        x = pad + (w - 2 * pad) * (step - steps[0]) / max(steps[-1] - steps[0], 1)
        y = h - pad - (h - 2 * pad) * (math.log10(max(v, 1e-12)) - lo) / (hi - lo)
        return x, y

    d.rectangle([pad, pad, w - pad, h - pad], outline=(160, 160, 160))
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        if lo <= e <= hi:
            y = xy(steps[0], 10 ** e)[1]
            d.line([pad, y, w - pad, y], fill=(225, 225, 225))
            d.text((4, y - 6), f"1e{e}", fill=(80, 80, 80))
    for k, colour in keys:
        # a moving average over 5 logged points keeps the curve readable
        raw = [r[k] for r in history]
        smooth = [sum(raw[max(0, i - 4): i + 1]) / len(raw[max(0, i - 4): i + 1]) for i in range(len(raw))]
        d.line([xy(s, v) for s, v in zip(steps, smooth, strict=True)], fill=colour, width=2)
    d.text((pad, 10), title, fill=(0, 0, 0))
    d.text((pad, h - pad + 8), f"step {steps[0]}", fill=(80, 80, 80))
    d.text((w - pad - 60, h - pad + 8), f"step {steps[-1]}", fill=(80, 80, 80))
    for i, (k, colour) in enumerate(keys):
        d.text((w - pad - 200 + 70 * i, 10), k, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        img.save(fh, format="PNG")


def before_after(model: Path, photo: Path, out: Path, size: int = 384) -> None:
    """The photo and what the model makes of it side by side (a multistyle model: every style, smaller)."""
    net, _ = load_model(model)
    n = getattr(net, "n_styles", 0)
    x = load_image(photo, size=size if not n else 256)
    with torch.no_grad():
        ys = [net(x)] if not n else [net(x, style_vector(i, n)[None]) for i in range(n)]
    save_image(torch.cat([x, *ys], dim=-1), out, quality=88)


def onnx_copy(model: Path) -> Path:
    """Export ``model`` with nst-export (ONNX only, verified, and its int8 form, quality-checked) and put its
    ``model.int8.onnx`` beside it as ``<name>.int8.onnx`` (the float32 ONNX is not bundled)."""
    import tempfile

    from nst_deploy.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        manifest = export_model(model, Path(tmp) / "exp", formats=("onnx",), int8=True)
        out = model.with_suffix(".int8.onnx")
        shutil.copyfile(Path(tmp) / "exp" / "model.int8.onnx", out)
    w = manifest["int8"]["worst"]
    print(f"{model.stem}: int8 loses {100 * w['style_drift']:.1f}% of the stylization, content drift "
          f"{w['content_drift']:.2f}, PSNR {w['psnr_db']:.1f} dB against float32")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, help="the training photographs' folder")
    ap.add_argument("--command-file", type=Path, help="a file holding the exact training commands, one per model")
    ap.add_argument("--onnx-only", action="store_true", help="write the int8 ONNX copies of bundled models only")
    ap.add_argument("--workdir", type=Path, help="the training work folder (one model; default MODEL.pt.train)")
    ap.add_argument("--sweep", type=Path, help="the sweep.json of scripts/sweep_style_weight.py that chose the "
                                               "style weight (kept in the model's record)")
    args = ap.parse_args(argv)
    if args.onnx_only:
        for m in args.models:
            out = onnx_copy(m)
            print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")
        return 0
    if args.data is None:
        ap.error("--data is required (the training photographs' folder)")
    commands = {}
    if args.command_file:
        for line in args.command_file.read_text().splitlines():
            for m in args.models:
                if m.name in line:
                    commands[m.name] = line.strip()
    photos = sorted(p for p in args.data.rglob("*") if p.is_file())
    data_list = [{"file": p.relative_to(args.data).as_posix(), "sha256": sha256_file(p)} for p in photos]
    MODELS.mkdir(parents=True, exist_ok=True)
    for m in args.models:
        name = m.stem
        state = read_model(m)
        work = args.workdir if args.workdir else m.with_name(m.name + ".train")
        log = json.loads((work / "loss.json").read_text())
        hist = log["history"]
        record = {
            "model": f"{name}.pt", "arch": state["arch"], "config": state["config"],
            "style": state["meta"].get("style"), "style_sha256": state["meta"].get("style_sha256"),
            "steps": state["meta"].get("steps"), "training_digest": state["meta"].get("training_digest"),
            "command": commands.get(m.name, ""),
            "data": {"how": "scripts/fetch_training_photos.sh", "files": data_list},
            "options": log["options"], "images_per_s_last": hist[-1]["images_per_s"] if hist else None,
            "loss_curve": hist,
        }
        if state["meta"].get("styles"):  # multistyle: its paintings, in the order of the style vector
            record["styles"] = state["meta"]["styles"]
            record["paintings"] = {"how": "scripts/fetch_paintings.sh (docs/paintings.md)"}
        if state["meta"].get("distilled"):  # nst train --teacher: the model it learned first
            record["distilled"] = state["meta"]["distilled"]
        if args.sweep:
            record["style_weight_sweep"] = json.loads(args.sweep.read_text())
        net, meta = load_model(m)
        fp16 = all(v.dtype == torch.float16 for v in state["state_dict"].values() if v.is_floating_point())
        if fp16:
            shutil.copyfile(m, MODELS / f"{name}.pt")
        else:  # bundled weights are stored in fp16 (half the size; the tests check the outputs)
            from nst_deploy.nets.io import save_model

            save_model(MODELS / f"{name}.pt", net, state["arch"], {k: v for k, v in meta.items()
                                                                   if k not in ("arch", "config")}, half=True)
        onnx_copy(MODELS / f"{name}.pt")
        with atomic_write(MODELS / f"{name}.json", "w") as fh:
            json.dump(record, fh, indent=1)
        title = f"{name}: training loss (moving average of 5 logs)"
        if record.get("distilled"):  # the distillation's terms are other measures: only the style phase
            title += f"; after {record['distilled']['steps']} steps of distillation"
            hist = [r for r in hist if not r.get("distill")] or hist
        loss_curve(hist, DOCS / f"{name}-loss.png", title)
        for photo in UNSEEN:
            if photo.is_file():
                before_after(m, photo, DOCS / f"{name}-{photo.stem}.jpg")
        size = (MODELS / f"{name}.pt").stat().st_size
        print(f"{name}: {size / 1e6:.2f} MB, {record['steps']} steps, final loss {hist[-1]['total']:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
