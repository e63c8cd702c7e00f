"""nst run on many images: folders, globs, stdin/stdout, batching, --skip-existing, --json, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.errors import NSTError
from nst_deploy.imageio import read_rgb, write_image
from nst_deploy.jobs import expand_inputs, run_items
from nst_deploy.models import bundled_models, bundled_onnx
from nst_deploy.runtime import Stylizer

from .conftest import DATA

ONNX = bundled_onnx(bundled_models()["johnson__starry_night"])


@pytest.fixture(scope="module")
def stylizer():
    """What nst run starry_night runs on the CPU (its int8 copy, the model file for tiles)."""
    from nst_deploy.models import load_paths

    path, fallback = load_paths(bundled_models()["johnson__starry_night"], on_cpu=True)
    return Stylizer.load(path, device="cpu", fallback=fallback)


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Five 96x64 JPEGs, three 56x72 PNGs in a subfolder, one corrupt file."""
    src = Image.open(DATA / "chelsea.jpg").convert("RGB")
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        src.rotate(15 * i).resize((96, 64)).save(root / f"a{i}.jpg", quality=95)
    for i in range(3):
        src.rotate(-20 * i).resize((56, 72)).save(root / "sub" / f"b{i}.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def _expected(stylizer, path: Path) -> np.ndarray:
    return np.asarray(stylizer(Image.open(path).convert("RGB"))).astype(int)


def test_a_folder_with_a_corrupt_file(folder, tmp_path, stylizer, capsys):
    out = tmp_path / "out"
    assert main(["run", "starry_night", str(folder), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "8 written, 0 skipped (existing), 1 failed" in err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a0.jpg", "a1.jpg", "a2.jpg", "a3.jpg", "a4.jpg", "sub/b0.png", "sub/b1.png", "sub/b2.png"]
    for rel in ("sub/b1.png", "a3.jpg"):  # byte for byte what one image through the Stylizer gives
        want = write_image(stylizer(read_rgb(folder / rel)), tmp_path / f"want{Path(rel).suffix}")
        assert (out / rel).read_bytes() == want.read_bytes(), rel


def test_batches_group_images_of_one_size(folder, tmp_path, stylizer):
    calls = []

    def stylize(x):
        calls.append(x.shape)
        return stylizer(x)

    items = expand_inputs([str(folder / "a0.jpg"), str(folder / "sub"), str(folder / "a1.jpg")], str(tmp_path / "o"))
    s = run_items(stylize, items, batch=2, workers=2)
    assert s.written == 5 and not s.failed
    # in order: a0 (96x64) alone before the 56x72 PNGs, those in twos, then a1
    assert [c[0] for c in calls] == [1, 2, 1, 1] and calls[1][1:3] == (72, 56)
    got = np.asarray(Image.open(tmp_path / "o" / "b2.png")).astype(int)
    assert np.abs(got - _expected(stylizer, folder / "sub" / "b2.png")).max() <= 1


def test_lanes_stylize_batches_side_by_side(folder, tmp_path, stylizer):
    """Two lanes: two batches in flight at once, the same files byte for byte, a failing batch named."""
    (folder / "broken.jpg").unlink()
    one = run_items(stylizer, expand_inputs([str(folder)], str(tmp_path / "one"), ext="png"), batch=2, workers=2)
    lock, active, most = threading.Lock(), [0], [0]

    def stylize(x):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.1)  # long enough for the other lane to start
            if x.shape[1:3] == (72, 56) and len(x) == 1:  # the last PNG's batch fails
                raise NSTError("the model failed on this batch")
            return stylizer(x)
        finally:
            with lock:
                active[0] -= 1

    two = run_items(stylize, expand_inputs([str(folder)], str(tmp_path / "two"), ext="png"), batch=2, workers=2,
                    lanes=2)
    assert most[0] == 2 and one.written == 8 and two.written == 7
    assert [Path(src).name for src, _ in two.failed] == ["b2.png"]
    for f in (tmp_path / "two").rglob("*.png"):
        assert f.read_bytes() == (tmp_path / "one" / f.relative_to(tmp_path / "two")).read_bytes(), f
    with pytest.raises(NSTError, match="--lanes must be at least 1"):
        run_items(stylizer, [], lanes=0)


def test_lane_defaults_and_threads(monkeypatch):
    from nst_deploy.devices import lane_threads
    from nst_deploy.jobs import default_lanes

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_lanes(True) == 2 and default_lanes(False) == 1 and lane_threads(2) == 4
    assert lane_threads(1) is None
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert default_lanes(True) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert lane_threads(2) == 3
    s = Stylizer.load(ONNX, device="cpu", threads=1, warmup=False)
    assert s.engine.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(NSTError, match="threads must be at least 1"):
        Stylizer.load(ONNX, device="cpu", threads=0)


def test_interrupt_then_skip_existing_finishes_exactly_the_rest(folder, tmp_path, stylizer):
    (folder / "broken.jpg").unlink()
    items = expand_inputs([str(folder)], str(tmp_path / "o"), ext="png")
    calls = []

    def interrupted(x):
        calls.append(len(x))
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during the second batch
        return stylizer(x)

    first = run_items(interrupted, items, batch=2, workers=2)
    assert first.interrupted and first.written == sum(calls) < len(items)
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*.png")}
    assert len(done) == first.written and not list((tmp_path / "o").rglob(".*"))  # no partial files
    second = run_items(stylizer, items, batch=2, workers=2, skip_existing=True)
    assert second.skipped == first.written and second.written == len(items) - first.written
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # the first run's outputs untouched
    assert len(list((tmp_path / "o").rglob("*.png"))) == len(items)


def test_json_records_and_globs(folder, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["run", str(ONNX), str(folder / "**" / "*.png"), "-o", str(out), "--json", "-q"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(Path(r["output"]).relative_to(out).as_posix() for r in recs) == \
        ["sub/b0.png", "sub/b1.png", "sub/b2.png"]
    assert all(r["status"] == "written" and (r["width"], r["height"]) == (56, 72) for r in recs)
    assert main(["run", str(ONNX), str(folder / "**" / "*.png"), "-o", str(out), "--json", "-q",
                 "--skip-existing"]) == 0
    assert {json.loads(line)["status"] for line in capsys.readouterr().out.splitlines()} == {"skipped"}


def test_stdin_to_stdout_without_torch(tmp_path, stylizer):
    photo = DATA / "chelsea.jpg"
    code = ("import sys; from nst_deploy.cli import main; c = main(['run', 'starry_night', '-', '--device', 'cpu']); "
            "sys.stderr.write(f'exit {c} torch {\"torch\" in sys.modules}')")
    proc = subprocess.run([sys.executable, "-c", code], input=photo.read_bytes(), capture_output=True, timeout=300)
    assert proc.stderr.decode().split()[-4:] == ["exit", "0", "torch", "False"], proc.stderr.decode()
    (tmp_path / "o.png").write_bytes(proc.stdout)
    got = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    assert np.abs(got - _expected(stylizer, photo)).max() <= 1
    bad = subprocess.run([sys.executable, "-m", "nst_deploy.cli", "run", "starry_night", "-"], input=b"junk",
                         capture_output=True, timeout=300)
    assert bad.returncode != 0 and bad.stdout == b"" and b"stdin" in bad.stderr


def test_bad_arguments(folder, tmp_path):
    with pytest.raises(NSTError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope.jpg"), str(folder)], str(tmp_path / "o"))
    with pytest.raises(NSTError, match="no image matches"):
        expand_inputs([str(tmp_path / "*.webp")], str(tmp_path / "o"))
    with pytest.raises(NSTError, match="need an output folder"):
        expand_inputs([str(folder)], None)
    (tmp_path / "x").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "x" / "a0.png")
    with pytest.raises(NSTError, match="would both write"):
        expand_inputs([str(folder / "a0.jpg"), str(tmp_path / "x" / "a0.png")], str(tmp_path / "o"), ext="png")
    assert main(["run", "starry_night", str(folder), "-o", str(tmp_path / "file.png")]) != 0
    assert main(["run", "starry_night", str(folder), "-o", str(tmp_path / "o"), "--ext", "gif"]) != 0
    assert main(["run", "starry_night", str(folder), "-o", str(tmp_path / "o"), "--lanes", "0"]) == 2
    assert main(["run", "starry_night", str(folder), "-o", str(tmp_path / "o"), "--batch", "0"]) == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "file.png").exists()
    assert os.listdir(tmp_path / "x") == ["a0.png"]


def test_video_without_pyav_names_the_extra(monkeypatch, tmp_path):
    from nst_deploy.video import import_av

    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(NSTError, match=r"pip install 'nst-deploy\[video\]'"):
        import_av()


def test_an_export_folder_as_the_model(folder, tmp_path, stylizer):
    from nst_deploy.export import export_model

    export_model(bundled_models()["johnson__starry_night"], tmp_path / "exp", formats=("onnx",), check=False)
    (folder / "broken.jpg").unlink()
    out = tmp_path / "o"
    assert main(["run", str(tmp_path / "exp"), str(folder / "sub"), "-o", str(out), "-q"]) == 0
    want = write_image(Stylizer.load(tmp_path / "exp" / "model.onnx")(read_rgb(folder / "sub" / "b0.png")),
                       tmp_path / "want.png")
    assert (out / "b0.png").read_bytes() == want.read_bytes()
