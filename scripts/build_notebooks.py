"""Build examples/*.ipynb from their readable sources, examples/sources/*.py.

Each source is a Python file in the "percent" format that Jupytext, VS Code and Spyder read: a
line ``# %%`` starts a code cell, ``# %% [markdown]`` a text cell whose lines are comments
(``# `` is taken off). Anything before the first marker is the file's own comment and is not
part of the notebook. The notebooks are written without outputs or execution counts, with
fixed cell ids, so the same source always gives the same bytes and git holds only what was
written by hand (tests/test_examples.py checks both).

    python scripts/build_notebooks.py          # write examples/*.ipynb
    python scripts/build_notebooks.py --check  # exit 1 if any notebook is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SOURCES = EXAMPLES / "sources"
MARKER = "# %%"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _markdown(lines: list[str]) -> str:
    text = []
    for line in lines:
        if line.startswith("# "):
            text.append(line[2:])
        elif line.rstrip() == "#":
            text.append("")
        else:
            raise ValueError(f"a markdown line must start with '# ': {line!r}")
    return "\n".join(text)


def _cells(source: str) -> list[tuple[str, str]]:
    """(kind, text) per cell: kind is "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith(MARKER):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        out.append((kind, _markdown(lines) if kind == "markdown" else "\n".join(lines)))
    return out


def notebook(source: str) -> NotebookNode:
    """The notebook of one source file: no outputs, fixed cell ids."""
    cells = []
    for i, (kind, text) in enumerate(_cells(source)):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cells.append(make(text, id=f"cell-{i:02d}"))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    nbformat.validate(nb)
    return nb


def render(source: str) -> str:
    """The notebook's file text, as nbformat writes it."""
    return nbformat.writes(notebook(source)) + "\n"


def targets() -> dict[Path, Path]:
    """Each source and the notebook built from it."""
    return {src: EXAMPLES / f"{src.stem}.ipynb" for src in sorted(SOURCES.glob("*.py"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for src, dest in targets().items():
        text = render(src.read_text(encoding="utf-8"))
        if dest.exists() and dest.read_text(encoding="utf-8") == text:
            continue
        stale.append(dest)
        if not args.check:
            dest.write_text(text, encoding="utf-8")
    for dest in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {dest.relative_to(ROOT)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
