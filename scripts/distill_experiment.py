"""The distillation experiment of docs/performance.md ("A smaller network"): a Johnson network of
``--width`` (0.25: 8/16/32 channels) learns to reproduce a trained model's outputs on the training
photographs (L1 on the pixels plus VGG19 feature distances at relu1_1, relu2_1, relu3_1, each over the
teacher's mean squared feature), then ``nst train --init`` fine-tunes it on the painting.

Not a product feature yet (no checkpoint, resume or interruption handling: ``nst train`` is where it
belongs); it records how the measured model was made. Usage::

    python scripts/distill_experiment.py starry_night --data training-photos -o small.pt --minutes 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nst_deploy.lossnets import load_lossnet
from nst_deploy.nets import create
from nst_deploy.nets.io import load_model, model_path, save_model
from nst_deploy.photos import PhotoDataset, scan_photos

LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", help="a bundled model's name or a model file")
    ap.add_argument("--data", required=True, type=Path, help="folder of training photographs")
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=192, help="crop size")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--lr-drop-step", type=int, default=1200, help="the learning rate goes 1e-3 -> 3e-4 here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher, meta = load_model(model_path(args.teacher))
    teacher.requires_grad_(False)
    student = create("johnson", width=args.width)
    vgg = load_lossnet("vgg19", device="cpu")
    vgg.requires_grad_(False)
    photos = PhotoDataset(scan_photos(args.data), args.size, 0, 0.4)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    start, step = time.time(), 0
    extra = {"style": meta.get("style"), "distilled_from": str(args.teacher)}
    while time.time() - start < args.minutes * 60:
        x = torch.stack([photos.sample(step * args.batch + j) for j in range(args.batch)])
        with torch.no_grad():
            target = teacher(x)
            ft = vgg(target, LAYERS)
        y = student(x)
        fs = vgg(y, LAYERS)
        pixel = F.l1_loss(y, target)
        feature = sum(F.mse_loss(fs[name], ft[name]) / ft[name].pow(2).mean() for name in LAYERS)
        loss = 10 * pixel + feature
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step == args.lr_drop_step:
            for g in opt.param_groups:
                g["lr"] = 3e-4
        if step % 25 == 0:
            print(f"step {step} {time.time() - start:.0f} s pixel {pixel.item():.4f} feature {feature.item():.4f}",
                  flush=True)
        if step % 200 == 0:
            save_model(args.output, student, "johnson", {**extra, "steps": step})
    save_model(args.output, student, "johnson", {**extra, "steps": step})
    print(f"wrote {args.output} ({step} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
