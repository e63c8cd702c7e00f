"""The documentation: the generated CLI reference is current, the README stays short and keeps the two
commands and CI's command, and its links lead to files that exist."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gen_cli_docs  # noqa: E402


def test_cli_reference_is_current():
    assert gen_cli_docs.main(["--check"]) == 0, "run: python scripts/gen_cli_docs.py"


def test_cli_reference_check_fails_when_stale(tmp_path, capsys):
    page = tmp_path / "cli.md"
    page.write_text(gen_cli_docs.render().replace("`--opset`", "`--opset-old`"))
    assert gen_cli_docs.main(["--check"], page=page) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen_cli_docs.main([], page=page) == 0 and gen_cli_docs.main(["--check"], page=page) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["cli.md"]  # no temporary file left


def test_cli_reference_covers_every_command_and_option():
    text = gen_cli_docs.render()
    for name, parser, _ in gen_cli_docs._parsers():
        assert f"## {name}\n" in text
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, (name, flag)
    for command in ("stylize", "synth", "train", "run", "serve", "layers", "info"):
        assert f"## nst {command}\n" in text


def test_readme_is_short_and_keeps_the_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for needed in ("make demo", "make test", "bash .ci/run", "docs/demo.jpg"):
        assert needed in text, needed
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_lead_to_files():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local)
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(re.search(rf":\s*{re.escape(p)}\s*$", nav, re.M) for p in pages), pages
