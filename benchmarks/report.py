"""Regenerate the README's performance section from ``benchmarks/results/*.json``.

Usage: ``python benchmarks/report.py [--check]``. The section between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` is replaced by one table per subject and device; ``--check`` exits 1 when
the README is out of date instead of writing it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(path: Path) -> str:
    """A markdown table for one results file."""
    rows = json.loads(path.read_text())
    if not rows:
        return ""
    env = rows[0].get("environment", {})
    versions = env.get("versions", {})
    head = (
        f"**{rows[0]['subject']}** on {env.get('device_name', '?')} "
        f"({env.get('cpu_cores', '?')} cores, torch {versions.get('torch', '?')}, {env.get('utc', '?')[:10]}); "
        f"from `{path.relative_to(ROOT)}`\n\n"
    )
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
    return head + "\n".join(lines) + "\n"


def render() -> str:
    files = sorted(RESULTS.glob("*.json"))
    body = "\n".join(table(p) for p in files) if files else "No results yet.\n"
    return f"{START}\n{body}{END}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is out of date")
    args = parser.parse_args(argv)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print("report: README.md has no bench markers", file=sys.stderr)
        return 2
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = before + render() + after
    if args.check:
        if new != text:
            print("report: README.md performance section is out of date: run python benchmarks/report.py",
                  file=sys.stderr)
            return 1
        return 0
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(new)
    os.replace(tmp, readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
