from __future__ import annotations

from shared.lifecycle import run_until_signal
from shared.telemetry import setup_logging

from services.worker.service import build_worker
from services.worker.settings import WorkerSettings


def main() -> None:
    setup_logging("worker")
    service = build_worker(WorkerSettings.from_env())
    run_until_signal(service.serve)
