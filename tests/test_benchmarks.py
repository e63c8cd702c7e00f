"""The benchmark harness and the README table generated from its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import report  # noqa: E402


def test_bench_and_write_results(tmp_path):
    x = torch.rand(64, 64)
    timing = harness.bench(lambda: x @ x, device="cpu", min_run_time=0.05)
    assert timing["median_ms"] > 0 and timing["p20_ms"] <= timing["p80_ms"] and timing["runs"] >= 1
    r = harness.row("demo", "eager", [64, 64], "float32", "fp32", timing, gflops_per_s=1.0)
    assert r["environment"]["versions"]["torch"] == torch.__version__
    path = harness.write_results("demo", [r], out_dir=tmp_path)
    assert json.loads(Path(path).read_text())[0]["provider"] == "eager"
    assert [p.name for p in tmp_path.iterdir()] == [Path(path).name]  # no temporary file left


def test_readme_table_matches_results():
    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py"
