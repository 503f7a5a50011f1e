"""Rewrite the README's blocks that come from the program, so they cannot drift from it.

    python scripts/readme.py                        # the models table, from `reslab models`
    python scripts/readme.py --demo runs/degradation/results.json   # and the demo's output
    python scripts/readme.py --check                # exit 1 if the models table is stale

Each block sits between ``<!-- begin: NAME ... -->`` and ``<!-- end: NAME -->`` in README.md.
``models`` is ``reslab models``' rows as a Markdown table (``tests/scripts/test_readme.py``
holds it equal to the program's). ``demo`` is what ``make demo`` prints at its end (the study's
table, its verdict, the report's path), read back from that run's results.json: the numbers
depend on the machine (bf16 with AMX, fp32 on AVX2, the CPU's kernels), so the block's opening
marker records the machine and date they came from, and the test checks the block's format, not
its numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"

_BLOCK = re.compile(
    r"(?P<begin><!-- begin: (?P<name>[a-z]+)(?P<note>[^>]*)-->\n)(?P<body>.*?)"
    r"(?P<end><!-- end: (?P=name) -->)",
    re.DOTALL,
)
MODELS_HEADER = (
    "| model | depth | params | MACs | input | shortcut |\n|---|---:|---:|---:|---:|---|"
)


def blocks(text: str) -> dict[str, tuple[str, str]]:
    """``{name: (note in the opening marker, body)}`` of every marked block in ``text``."""
    return {m["name"]: (m["note"].strip(), m["body"]) for m in _BLOCK.finditer(text)}


def replace(text: str, name: str, body: str, note: str | None = None) -> str:
    """``text`` with block ``name``'s body (and, if given, its note) replaced."""
    found = [m for m in _BLOCK.finditer(text) if m["name"] == name]
    if len(found) != 1:
        raise SystemExit(f"README.md has {len(found)} blocks named {name!r}; expected one")
    (m,) = found
    begin = m["begin"] if note is None else f"<!-- begin: {name} {note} -->\n"
    return text[: m.start()] + begin + body + m["end"] + text[m.end() :]


def models_block(rows: Sequence[Sequence[str]]) -> str:
    """``reslab models``' rows (name, depth, params, ≈, MACs, input, shortcut) as Markdown."""
    lines = [MODELS_HEADER]
    for name, depth, params, _, macs, size, shortcut in rows:
        shown = "none" if shortcut.startswith("none") else shortcut
        lines.append(
            f"| {name} | {depth} | {params} | {macs} | {size.replace('x', '×')} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def demo_note(results: dict[str, Any]) -> str:
    """The opening marker's note: where and when these numbers were measured."""
    return (
        f"(machine-dependent; scripts/readme.py --demo: {results['machine']}, "
        f"torch {results['torch_version']}, {results['created'][:10]})"
    )


def demo_block(results: dict[str, Any]) -> str:
    """The end of ``make demo``'s output, from its results.json, as the console prints it."""
    from reslab.experiments import get_study
    from reslab.experiments.runner import summary_table

    views = get_study(results["experiment"]).look()
    table = (views.text_table or summary_table)(results)
    report = f"{results['config']['out']}/report.html"
    return f"```\n{table}\n\n{results['verdict']['text']}\nreport: {report}\n```\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, metavar="RESULTS_JSON", help="a demo run's results")
    parser.add_argument("--check", action="store_true", help="change nothing; 1 if stale")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from reslab.cli.models import model_rows

    text = args.readme.read_text(encoding="utf-8")
    new = replace(text, "models", models_block(model_rows()))
    if args.demo:
        results = json.loads(args.demo.read_text(encoding="utf-8"))
        new = replace(new, "demo", demo_block(results), demo_note(results))
    if args.check:
        if new != text:
            print(f"{args.readme} is stale: run python scripts/readme.py", file=sys.stderr)
        return int(new != text)
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"rewrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
