"""Write the command-line reference, ``docs/cli.md``, from the real argparse parsers.

Usage: ``python scripts/gen_cli_docs.py [--check]``. The parsers are those of the console scripts:
``nst_deploy.cli.build_parser`` (``nst`` and every subcommand) and ``nst_deploy.export.cli.build_parser``
(``nst-export``). For each command the page gives its description, a usage line and one table per
argument group (flags, value, default, help). ``--check`` writes nothing and exits 1 when the page is
out of date (a test runs it, so a changed option without a regenerated page fails).

The usage lines are built here rather than by argparse's formatter, so that the page does not depend
on the terminal's width or on the Python version's help layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nst_deploy.fsutil import atomic_write

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
WIDTH = 100

HEADER = """# Command-line reference

This page is generated from the command line's own parsers by `scripts/gen_cli_docs.py`
(`nst_deploy.cli.build_parser` and `nst_deploy.export.cli.build_parser`); do not edit it by hand. After
changing an option, run `python scripts/gen_cli_docs.py`; `python scripts/gen_cli_docs.py --check` fails
when the page is out of date, and the test suite runs it.

Every command also takes `-h` / `--help`, which prints the same information.
"""


def _parsers() -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """``(name, parser, one-line help)`` for ``nst``, each ``nst`` subcommand, then ``nst-export``."""
    import nst_deploy.export.cli

    import nst_deploy.cli

    nst = nst_deploy.cli.build_parser()
    out: list[tuple[str, argparse.ArgumentParser, str | None]] = [("nst", nst, None)]
    for action in nst._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((f"nst {name}", sub, helps.get(name)))
    out.append(("nst-export", nst_deploy.export.cli.build_parser(), None))
    return out


def _metavar(action: argparse.Action) -> str:
    """The value an argument takes, as argparse shows it: METAVAR, {a,b} for choices, or H W."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        names = action.metavar if isinstance(action.metavar, tuple) else (action.metavar,)
    elif action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        names = ("{" + ",".join(str(c) for c in action.choices) + "}",)
    elif action.option_strings:
        names = (action.dest.upper(),)
    else:
        names = (action.dest,)
    nargs = action.nargs
    if isinstance(nargs, int):
        parts = list(names) if len(names) == nargs else [names[0]] * nargs
        return " ".join(parts)
    name = names[0]
    return {
        None: name,
        "?": f"[{name}]",
        "*": f"[{name} ...]",
        "+": f"{name} [{name} ...]",
        argparse.PARSER: f"{name} ...",
        argparse.REMAINDER: "...",
    }.get(nargs, name)


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    """``usage: PROG [-h] [--flag VALUE] ... positional``, wrapped at :data:`WIDTH` columns."""
    optionals, positionals = [], []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        value = _metavar(action)
        if action.option_strings:
            part = action.option_strings[0] + (f" {value}" if value else "")
            optionals.append(part if action.required else f"[{part}]")
        else:
            positionals.append(value)
    first = f"usage: {prog} "
    lines, line = [], first
    for part in optionals + positionals:
        if len(line) + len(part) > WIDTH and line.strip() != first.strip():
            lines.append(line.rstrip())
            line = " " * len(first)
        line += part + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text fit for a markdown table cell: one line, pipes and angle brackets escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %(prog)s and the like
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    return text


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
        return ""
    value = action.default
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f"`{value}`"


def _group_tables(prog: str, parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for group in parser._action_groups:
        rows = []
        for action in group._group_actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
            value = _metavar(action)
            rows.append(f"| {flags} | {f'`{value}`' if value else ''} | {_default(action)} | "
                        f"{_cell(_help(action, prog))} |")
        if not rows:
            continue
        title = f"**{group.title}**" if group.title else ""
        if group.description:
            title += f": {_cell(group.description)}"
        out += [title, "", "| argument | value | default | description |", "| --- | --- | --- | --- |", *rows, ""]
    return out


def _commands_table(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            rows = [f"| [`nst {a.dest}`](#{_anchor(f'nst {a.dest}')}) | {_cell(a.help or '')} |"
                    for a in action._choices_actions]
            return ["| command | what it does |", "| --- | --- |", *rows, ""]
    return []


def _anchor(title: str) -> str:
    """The id MkDocs gives a heading (``nst stylize`` -> ``nst-stylize``)."""
    return "-".join(title.lower().split())


def render() -> str:
    lines = [HEADER]
    for name, parser, one_line in _parsers():
        lines += [f"## {name}", ""]
        if one_line:
            lines += [_cell(one_line[0].upper() + one_line[1:]) + ".", ""]
        if parser.description:
            lines += [" ".join(parser.description.split()), ""]
        lines += ["```text", _usage(name, parser), "```", ""]
        lines += _commands_table(parser)
        lines += _group_tables(name, parser)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None, page: Path | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    page = PAGE if page is None else Path(page)
    new = render()
    old = page.read_text() if page.exists() else None
    if args.check:
        if new != old:
            print(f"gen_cli_docs: {page.name} is out of date: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        with atomic_write(page, "w") as fh:
            fh.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
