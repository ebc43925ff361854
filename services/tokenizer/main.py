from __future__ import annotations

from shared.lifecycle import run_until_signal
from shared.telemetry import setup_logging

from services.tokenizer.service import build_worker
from services.tokenizer.settings import TokenizerSettings


def main() -> None:
    setup_logging("tokenizer")
    service = build_worker(TokenizerSettings.from_env())
    run_until_signal(service.serve)
