"""Build a model folder atomically: in a temporary sibling, renamed into place when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = ".sluice-complete"


def is_built(out: Path) -> bool:
    return (out / MARKER).exists()


def build_atomically(out: Path, fill: Callable[[Path], None]) -> Path:
    """`fill(folder)` writes the model; a crash leaves no half-built folder at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}-", dir=out.parent))
    os.chmod(work, 0o755)
    try:
        fill(work)
        for path in work.iterdir():
            os.chmod(path, 0o644)  # safetensors' save_file writes 0600
        (work / MARKER).write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out


def cli(description: str, default_out: Path, build: Callable[[Path], Path], what: str) -> None:
    """`--out DIR [--force]`: build the model unless it is there; print its folder last."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    if args.force or not is_built(out):
        print(f"building {what} in {out}", flush=True)
        build(out)
    print(out)
