"""The many-images job on a local Ray cluster: the single-process outputs, and a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_deploy.cli import main
from nst_deploy.jobs import expand_inputs, run_items
from nst_deploy.models import bundled_models, bundled_onnx
from nst_deploy.runtime import Stylizer

from .conftest import DATA

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
from nst_deploy.batch import run_on_ray  # noqa: E402

ONNX = bundled_onnx(bundled_models()["johnson__starry_night"])
N = 50


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray") / "in"
    (root / "sub").mkdir(parents=True)
    src = Image.open(DATA / "coffee.jpg").convert("RGB")
    for i in range(N):
        img = src.rotate(7 * i).resize((320, 256) if i % 3 else (256, 320))
        img.save(root / ("sub" if i % 5 == 0 else "") / f"p{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    items = expand_inputs([str(photos)], str(out))
    assert run_items(Stylizer.load(ONNX, device="cpu"), items, batch=4).written == N
    return out


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if any("MapWorker" in part for part in (p.info["cmdline"] or []))]


def test_a_killed_worker_loses_and_duplicates_nothing(photos, reference, tmp_path):
    items = expand_inputs([str(photos)], str(tmp_path / "out"))
    killed = {}

    def kill_one():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = len(list((tmp_path / "out").rglob("*.png")))
            workers = _workers()
            if done >= 6 and workers:
                killed["pid"], killed["done"] = workers[0].pid, done
                os.kill(workers[0].pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one, daemon=True)
    watcher.start()
    recs = run_on_ray(ONNX, [(it.src, it.out) for it in items], workers=2, batch=2, num_cpus=2)
    watcher.join(timeout=5)
    assert killed and killed["done"] < N, "no worker was killed mid-job"
    assert [r["src"] for r in recs] == [it.src for it in items]  # each once, none lost
    assert all(r["status"] == "written" for r in recs)
    assert len({r["pid"] for r in recs}) >= 2  # two workers (three with the restarted one)
    for it in items:  # the same bytes as the single-process run
        rel = os.path.relpath(it.out, tmp_path / "out")
        assert (reference / rel).read_bytes() == Path(it.out).read_bytes(), rel
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no partial files


def test_cli_ray_matches_the_single_process_run(photos, tmp_path, capsys):
    # The bundled name runs its int8 copy on the CPU, in one process as on Ray: compare the two CLI runs.
    single, out = tmp_path / "single", tmp_path / "cli"
    assert main(["run", "starry_night", str(photos), "-o", str(single), "--device", "cpu", "-q"]) == 0
    assert main(["run", "starry_night", str(photos), "-o", str(out), "--ray", "--workers", "2", "--device",
                 "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{N} written, 0 skipped (existing), 0 failed" in err
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert len(files) == N and files == sorted(p.relative_to(single) for p in single.rglob("*.png"))
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(out / rel)), np.asarray(Image.open(single / rel))), rel
