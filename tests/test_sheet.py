"""nst run --sheet: every bundled style on one photo, labelled."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.models import bundled_models, bundled_onnx
from nst_deploy.runtime import Stylizer
from nst_deploy.sheet import GAP, LABEL_H

from .conftest import DATA


def test_sheet_holds_every_bundled_style_labelled(tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(DATA / "chelsea.jpg").convert("RGB").resize((120, 80)).save(photo)
    out = tmp_path / "sheet.png"
    code = ("import sys; from nst_deploy.cli import main; "
            f"c = main(['run', '--sheet', {str(photo)!r}, '-o', {str(out)!r}, '--size', '120', '-q']); "
            "print(c, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["0", "False"], proc.stdout + proc.stderr
    sheet = np.asarray(Image.open(out)).astype(int)
    cells = [np.asarray(Image.open(photo)).astype(int)]
    for p in bundled_models().values():  # a multistyle network: one cell per style
        s = Stylizer.load(bundled_onnx(p), device="cpu")
        for k in range(s.n_styles) if s.n_styles else [None]:
            cells.append(np.asarray(s(Image.open(photo), style=k)).astype(int))
    n = len(cells)
    cols = min(5, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / cols))
    assert sheet.shape == (rows * (80 + LABEL_H) + (rows + 1) * GAP, cols * 120 + (cols + 1) * GAP, 3)
    for k, want in enumerate(cells):
        r, c = divmod(k, cols)
        x0, y0 = GAP + c * (120 + GAP), GAP + r * (80 + LABEL_H + GAP)
        assert np.abs(sheet[y0:y0 + 80, x0:x0 + 120] - want).max() <= 1, k
        label = sheet[y0 + 80:y0 + 80 + LABEL_H, x0:x0 + 120]
        assert (label.sum(-1) < 200).sum() > 20  # dark text on white
    assert len({tuple(cells[k][40, 60]) for k in range(n)}) == n  # the styles differ


def test_sheet_errors(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "grey").save(photo)
    assert main(["run", "starry_night", "--sheet", str(photo), "-o", str(tmp_path / "a.png")]) != 0
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["run", "--sheet", str(tmp_path / "broken.jpg"), "-o", str(tmp_path / "b.png")]) != 0
    assert main(["run", "--sheet", str(photo), "-o", str(tmp_path / "c.png"), "--strength", "-1"]) != 0
    assert not any((tmp_path / f).exists() for f in ("a.png", "b.png", "c.png"))
