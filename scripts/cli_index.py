"""Rewrite the command line's stored declarations (``src/reslab/_data/cli.json``).

    python scripts/cli_index.py [PATH]

``reslab`` builds its parser from that file so that ``reslab --help`` imports no torch
(:mod:`reslab.cli.index`); ``tests/cli/test_index.py`` fails when it no longer matches what the
program declares (a flag, a help text, a study or a model changed). Run this, then commit it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reslab.cli import index

if __name__ == "__main__":
    print(f"wrote {index.write(Path(sys.argv[1]) if len(sys.argv) > 1 else index.PATH)}")
