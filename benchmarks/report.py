"""Regenerate the tables of the documentation's performance page from ``benchmarks/results/*.json``.

Usage: ``python benchmarks/report.py [--check]``. The section of ``docs/performance.md`` between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` is replaced by one table per subject and device (the
prose above the markers is the page's own and is left alone); ``--check`` exits 1 when the page is out
of date instead of writing it.

Each results file is laid out by its subject (the first row's ``subject``): :data:`LAYOUTS` maps a
subject to a function ``(rows, path) -> markdown``; subjects without an entry get the kernel-style
table of :func:`kernel_table` (shape, dtype, provider, times, GFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from nst_deploy.fsutil import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The page whose marked section holds the tables.
PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _source(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:  # a file outside the repository (tests)
        return path.name


def _head(rows: list[dict], path: Path, triton: bool = False) -> str:
    """The line above a table: subject, device (cores on a CPU), versions, date, source file."""
    env = rows[0].get("environment", {})
    versions = env.get("versions", {})
    where = f"{env.get('cpu_cores', '?')} cores, " if not str(env.get("device", "cpu")).startswith("cuda") else ""
    tri = f"triton {versions.get('triton', '-')}, " if triton else ""
    return (
        f"**{rows[0]['subject']}** on {env.get('device_name', '?')} "
        f"({where}torch {versions.get('torch', '?')}, {tri}{env.get('utc', '?')[:10]}); from `{_source(path)}`\n\n"
    )


def kernel_table(rows: list[dict], path: Path) -> str:
    """Shape, dtype, provider, median and p20-p80 ms, GFLOP/s, compile s (e.g. ``lossnet_vgg19``)."""
    lines = [
        "| shape | dtype | provider | median ms | p20-p80 ms | GFLOP/s | compile s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['provider']} | "
                         f"failed: {r['error'][:60]} | | | |")
            continue
        spread = f"{_fmt(r.get('p20_ms'))}-{_fmt(r.get('p80_ms'))}"
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['dtype']} | {r['provider']} | {_fmt(r.get('median_ms'))} | "
            f"{spread} | {_fmt(r.get('gflops_per_s'))} | {_fmt(r.get('compile_s'))} |"
        )
    return _head(rows, path) + "\n".join(lines) + "\n"


def _loss(value) -> str:
    if value is None:
        return "nan/inf"
    return f"{value:.4g}"


def stylize_table(rows: list[dict], path: Path) -> str:
    """Per-image optimization, ours against pastiche (``benchmarks/bench_stylize.py``)."""
    head = _head(rows, path)
    lines = [
        "| size | optimizer | tool | s/step | peak memory MB | final loss | own final loss | lr |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    kinds, checks, steps = set(), [], set()
    for r in rows:
        hw = r.get("content_hw") or r["shape"][-2:]
        size = f"{r.get('size', max(hw))} ({hw[1]}x{hw[0]})"
        first = f"| {size} | {r.get('optimizer', '?')} | {r['provider']} |"
        if r.get("error"):
            lines.append(f"{first} failed: {r['error'][:60]} | | | | |")
            continue
        steps.add(r.get("steps"))
        kinds.add(r.get("peak_mem_kind"))
        if r.get("objective_check"):
            c = r["objective_check"]
            checks.append(max(c["init_rel"], c["content_rel"], c["style_rel"]))
        lr = r.get("lr")
        lr_cell = "" if lr is None else f"{lr:g}" + (f" ({r['lr_units']})" if r.get("lr_units") else "")
        lines.append(
            f"{first} {_fmt(r.get('s_per_step'), 3)} | {_fmt(r.get('peak_mem_mb'))} | "
            f"{_loss(r.get('final_loss'))} | {_loss(r.get('own_final_loss'))} | {lr_cell} |"
        )
    notes = [
        f"Steps: {', '.join(str(s) for s in sorted(steps, key=str))}; s/step is the mean over the steps after the "
        "first two. Peak memory: " + "; ".join(sorted(k for k in kinds if k)) + ".",
        "Final loss: the final image (clamped to [0, 1]) scored by nst_deploy's loss; own final loss: the last "
        "loss the tool reported (the same objective in both tools). nst_deploy returns the best iterate, pastiche "
        "the last.",
    ]
    if checks:
        notes.append(f"The two objectives agree to {max(checks):.1e} (relative; at the initial image and, term by "
                     "term, at a perturbed one).")
    return head + "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


LAYOUTS: dict[str, Callable[[list[dict], Path], str]] = {
    "stylize": stylize_table,
}


def gram_kernels_table(rows: list[dict], path: Path) -> str:
    """Style-statistic ops per style layer, op and provider (``benchmarks/bench_kernels.py``)."""
    head = _head(rows, path, triton=True)
    lines = [
        "| image | layer | C x H x W | op | provider | precision | median ms | GB/s | GFLOP/s | of HBM peak "
        "| compile s |",
        "| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        c, h, w = r["shape"][1:]
        op = r.get("op", "") + (f" (K={r['masks']})" if r.get("masks") else "") + (
            f" (s={r['window']})" if r.get("window") is not None else "")
        first = (f"| {r.get('image_size', '')} | {r.get('layer', '')} | {c}x{h}x{w} | {op} | "
                 f"{r['provider']} | {r.get('precision', '')} |")
        if r.get("error"):
            lines.append(f"{first} failed: {r['error'][:50]} | | | | |")
            continue
        frac = r.get("fraction_of_peak")
        lines.append(
            f"{first} {_fmt(r.get('median_ms'), 2)} | {_fmt(r.get('gb_per_s'))} | {_fmt(r.get('gflops_per_s'))} | "
            f"{'' if frac is None else f'{100 * frac:.0f}%'} | {_fmt(r.get('compile_s'))} |"
        )
    return head + "\n".join(lines) + "\n"


LAYOUTS["kernels"] = gram_kernels_table


def runtime_table(rows: list[dict], path: Path) -> str:
    """Feed-forward inference per provider and size: p50/p99 ms, images/s, peak memory, error vs eager."""
    lines = [
        "| model | shape | provider | precision | p50 ms | p99 ms | images/s | peak MB | max error vs eager |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        model = "" if "peer" in r["provider"] else r.get("model", "")
        if r.get("error"):
            lines.append(f"| {model} | {shape} | {r['provider']} | {r['precision']} | failed: {r['error'][:60]} "
                         "| | | | |")
            continue
        err = r.get("max_error_vs_eager")
        err = "" if err is None else f"{err:.1e}"
        q = r.get("int8_quality")
        if q:  # the export's measured quality drop on photographs
            err += f" (photos: {100 * q['style_drift']:.1f}% of the style lost, {q['psnr_db']:.0f} dB)"
        lines.append(
            f"| {model} | {shape} | {r['provider']} | {r['precision']} | {_fmt(r.get('p50_ms'))} | "
            f"{_fmt(r.get('p99_ms'))} | {_fmt(r.get('images_per_s'), 2)} | {_fmt(r.get('peak_mb'), 0)} | {err} |"
        )
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["runtime"] = runtime_table


def tiling_table(rows: list[dict], path: Path) -> str:
    """Tiled inference of a large image: time, tiles, memory against the budget, seam error."""
    lines = [
        "| image | provider | budget MB | call MB | peak RSS MB | tiles | tile | thumbnail | s | "
        "seam max / mean (8-bit levels) | boundary step ratio x / y |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for r in rows:
        size = f"{r['shape'][3]}x{r['shape'][2]}"
        if r.get("error"):
            lines.append(f"| {size} | {r['provider']} | {_fmt(r.get('budget_mb'), 0)} | failed: {r['error'][:60]} "
                         "| | | | | | | |")
            continue
        th = "x".join(str(v) for v in reversed(r["thumbnail"]))
        rx, ry = r.get("boundary_step_ratio_x"), r.get("boundary_step_ratio_y")
        lines.append(
            f"| {size} | {r['provider']} | {_fmt(r['budget_mb'], 0)} | {_fmt(r['call_mb'], 0)} | "
            f"{_fmt(r['peak_rss_mb'], 0)} | {r['tiles']} | {r['tile_side']} | {th} | {_fmt(r['wall_s'], 1)} | "
            f"{r['seam_max_abs_levels']} / {r['seam_mean_abs_levels']:.1e} | "
            f"{'' if rx is None else f'{rx:.3f}'} / {'' if ry is None else f'{ry:.3f}'} |"
        )
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["tiling"] = tiling_table


def cli_table(rows: list[dict], path: Path) -> str:
    """Wall time of whole processes (``benchmarks/bench_cli.py``): median and range over the repeats."""
    lines = ["| what | image | wall s (median) | min-max s |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        size = r["shape"][-1]
        image = f"{size}x{size}" if size else ""
        if r.get("error"):
            lines.append(f"| {r['provider']} | {image} | failed: {r['error'][:60]} | |")
            continue
        lines.append(f"| {r['provider']} | {image} | {r['median_ms'] / 1e3:.2f} | "
                     f"{r['p20_ms'] / 1e3:.2f}-{r['p80_ms'] / 1e3:.2f} |")
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["cli"] = cli_table


def quality_table(rows: list[dict], path: Path) -> str:
    """The measures of nst_deploy.quality per painting, photo and producer (``benchmarks/bench_quality.py``)."""
    lines = ["| painting | photo | made by | style ratio | content ratio | palette ratio | border ratio (photo's) "
             "| s |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['style']} | {r['photo']} | {r['provider']} | {r['style_ratio']:.3f} | "
                     f"{r['content_ratio']:.3f} | {r['palette_ratio']:.3f} | {r['border_ratio']:.2f} "
                     f"({r['photo_border_ratio']:.2f}) | {r['seconds']:.1f} |")
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["quality"] = quality_table


def tradeoff_table(rows: list[dict], path: Path) -> str:
    """The multistyle network against the per-style Johnson models, at full strength and at the same
    content ratio (the model keeping less of the photo run at a lower strength; ``benchmarks/bench_tradeoff.py``)."""
    lines = ["| style | Johnson style / content (strength) | multistyle style / content (strength) | "
             "multistyle / Johnson, same content | at full strength |", "| --- | --- | --- | ---: | ---: |"]
    for r in rows:
        j, m = r["johnson"], r["multistyle"]
        lines.append(f"| {r['provider']} | {j['style_ratio']:.3f} / {j['content_ratio']:.3f} ({j['strength']:.2f}) | "
                     f"{m['style_ratio']:.3f} / {m['content_ratio']:.3f} ({m['strength']:.2f}) | "
                     f"{r['ratio_matched']:.2f}x | {r['ratio_full']:.2f}x |")
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["tradeoff"] = tradeoff_table


def batch_table(rows: list[dict], path: Path) -> str:
    """Images per second over a folder (``benchmarks/bench_batch.py``), each way's speed-up over the loop
    of one ``nst run`` per image, and the one-at-a-time loop's stages per image."""
    base = next((r["images_per_s"] for r in rows if r["provider"] == "nst run per image"), None)
    loop = next((r["images_per_s"] for r in rows if r["provider"] == "one at a time"), None)
    lines = ["| how | images | image | images/s | x per-image runs | x one at a time | read / stylize / write ms "
             "(overlap bound) |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        size = r["shape"][1]
        ratio = f"{r['images_per_s'] / base:.1f}" if base else ""
        vs_loop = f"{r['images_per_s'] / loop:.2f}" if loop and not r["provider"].startswith("video") else ""
        stages = (f"{r['read_ms']} / {r['stylize_ms']} / {r['write_ms']} ({r['overlap_bound']:.2f}x)"
                  if "overlap_bound" in r else "")
        lines.append(f"| {r['provider']} | {r['images']} | {size}x{size} | {r['images_per_s']:.2f} | {ratio} | "
                     f"{vs_loop} | {stages} |")
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["batch"] = batch_table


def serve_table(rows: list[dict], path: Path) -> str:
    """``nst serve`` against direct ``Stylizer`` calls (``benchmarks/bench_serve.py``): latency per request,
    throughput, and for one client the serving overhead (served p50 over direct p50)."""
    lines = ["| image | how | clients | requests | p50 ms | p99 ms | images/s | p50 / direct | server MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: (r["shape"][2] * r["shape"][3], r["provider"] != "direct Stylizer")):
        over = r.get("overhead_vs_direct")
        mem = r.get("server_rss_mb")
        lines.append(f"| {r['shape'][3]}x{r['shape'][2]} | {r['provider']} | {r['clients']} | {r['requests']} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['images_per_s']:.2f} | "
                     f"{f'{over:.2f}x' if over else ''} | {f'{mem:.0f}' if mem else ''} |")
    return _head(rows, path) + "\n".join(lines) + "\n"


LAYOUTS["serve"] = serve_table


def table(path: Path) -> str:
    """A markdown table for one results file, laid out by its subject."""
    rows = json.loads(path.read_text())
    if not rows:
        return ""
    layout = LAYOUTS.get(rows[0].get("subject"), kernel_table)
    return layout(rows, path)


def render() -> str:
    files = sorted(RESULTS.glob("*.json"))
    body = "\n".join(table(p) for p in files) if files else "No results yet.\n"
    return f"{START}\n{body}{END}"


def main(argv: list[str] | None = None, page: Path | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"fail if {_source(PAGE)} is out of date")
    args = parser.parse_args(argv)
    page = PAGE if page is None else Path(page)
    name = _source(page)
    text = page.read_text()
    if START not in text or END not in text:
        print(f"report: {name} has no bench markers", file=sys.stderr)
        return 2
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = before + render() + after
    if args.check:
        if new != text:
            print(f"report: the tables of {name} are out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    with atomic_write(page, "w") as fh:
        fh.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
