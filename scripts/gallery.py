"""Render the gallery: one picture per multi-style / style-representation / synthesis capability.

    python scripts/gallery.py [--out docs/gallery] [--size 256] [--only NAME ...]

Every picture comes from the bundled images (``nst_deploy/data``) with the settings listed in
``GALLERY`` below, so the README's pictures can be reproduced exactly (``make gallery``). Each
render prints its time and loss fall; ``docs/gallery/gallery.json`` records the settings and figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst_deploy import stylize  # noqa: E402
from nst_deploy.fsutil import atomic_write  # noqa: E402
from nst_deploy.images import load_image, save_image  # noqa: E402
from nst_deploy.styles import Style  # noqa: E402

DATA = ROOT / "nst_deploy" / "data"
CAT, STARRY, SCREAM = DATA / "chelsea.jpg", DATA / "starry_night.jpg", DATA / "the_scream.jpg"


def soft_halves(hw: tuple[int, int], edge: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right masks with a linear transition over ``edge`` of the width."""
    h, w = hw
    x = torch.linspace(0.0, 1.0, w)
    left = ((0.5 + edge / 2 - x) / edge).clamp(0.0, 1.0).expand(h, w)
    return left[None, None].clone(), (1.0 - left)[None, None].clone()


def _stylize(size: int, style, steps: int = 150, **kw):
    log = []
    out = stylize(CAT, style, size=size, steps=steps, callback=lambda i: log.append(i.terms.total),
                  as_tensor=True, **kw)
    return out, log


def hierarchical(size):
    """Starry Night on conv1_1, conv2_1; The Scream on conv3_1, conv4_1, conv5_1 (the default cut)."""
    return _stylize(size, [STARRY, SCREAM])


def blend(size):
    """Both styles on every style layer, statistics mixed 50/50."""
    return _stylize(size, [Style(STARRY, 0.5), Style(SCREAM, 0.5)], multi_style="blend")


def masks(size):
    """Starry Night on the left, The Scream on the right, a soft transition over 20% of the width."""
    h, w = load_image(CAT, size=size).shape[-2:]
    left, right = soft_halves((h, w))
    return _stylize(size, [Style(STARRY, mask=left), Style(SCREAM, mask=right)])


def partial(size):
    """Content on conv1_1, conv2_1, conv4_1, conv4_2, style on conv3_1, conv5_1: the cat keeps its colours."""
    return _stylize(size, STARRY, preset="partial")


def autocorr(size):
    """Per-channel spatial autocorrelation (the style fitted to the output's size)."""
    return _stylize(size, STARRY, style_rep="autocorr", style_weight=10.0)


def local(size):
    """Localized Gram, window 1: the painting's statistics place by place (the style fitted to the output)."""
    return _stylize(size, STARRY, style_rep="local", window=1, steps=100)


def _synth(size, mode, steps=150, **kw):
    from nst_deploy.synth import synth

    log = []
    out = synth(mode, size=(size * 2 // 3, size), steps=steps, callback=lambda i: log.append(i.terms.total), **kw)
    return out, log


def synth_single(size):
    """nst synth single: one non-zero Gram entry on relu3_1 (drawn from seed 1), from noise."""
    return _synth(size, "single", seed=1)


def synth_sparse(size):
    """nst synth sparse: random sparse targets (90% zeros) on relu1_1..relu5_1, from noise."""
    return _synth(size, "sparse")


def synth_mimic(size):
    """nst synth mimic: random targets with Starry Night's per-layer sparsity and amplitude."""
    return _synth(size, "mimic")


def texture(size):
    """nst synth texture: texture synthesis from Starry Night (its Grams on conv1_1..conv5_1)."""
    return _synth(size, "texture", style=STARRY)


GALLERY = {f.__name__: f for f in (hierarchical, blend, masks, partial, autocorr, local, synth_single, synth_sparse,
                                   synth_mimic, texture)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--only", nargs="*", choices=list(GALLERY))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "gallery.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for name in args.only or list(GALLERY):
        fn = GALLERY[name]
        t0 = time.perf_counter()
        img, log = fn(args.size)
        dt = time.perf_counter() - t0
        save_image(img, out / f"{name}.jpg", quality=90)
        record[name] = {"what": fn.__doc__, "size": list(img.shape[-2:]), "steps": len(log),
                        "loss_first": log[0], "loss_last": log[-1], "seconds": round(dt, 1)}
        print(f"{name}: {len(log)} steps, loss {log[0]:.3g} -> {log[-1]:.3g}, {dt:.0f} s", flush=True)
        with atomic_write(record_path, "w") as fh:
            json.dump(record, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
