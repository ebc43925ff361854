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
