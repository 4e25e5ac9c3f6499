"""Strip outputs, execution counts and cell metadata from notebooks, so that what is committed
is the code and text only (`tests/test_notebooks.py` checks it).

    .venv/bin/python notebooks/strip.py            # every notebook in notebooks/
    .venv/bin/python notebooks/strip.py --check    # exit 1, naming those that keep outputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat


def strip(nb: nbformat.NotebookNode) -> bool:
    """Clear the notebook in place; True if anything was there to clear."""
    changed = False
    for cell in nb.cells:
        if cell.metadata:
            cell.metadata, changed = {}, True
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path(__file__).parent)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if dirty")
    args = parser.parse_args()
    dirty = []
    for path in sorted(args.folder.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    verb = "keep outputs" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
