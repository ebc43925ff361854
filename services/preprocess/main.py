from __future__ import annotations

from shared.lifecycle import run_until_signal
from shared.telemetry import setup_logging

from services.preprocess.service import build_worker
from services.preprocess.settings import PreprocessSettings


def main() -> None:
    setup_logging("preprocess")
    service = build_worker(PreprocessSettings.from_env())
    run_until_signal(service.serve)
