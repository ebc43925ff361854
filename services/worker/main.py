from __future__ import annotations

import logging
import sys

if __name__ == "__mp_main__":
    # This module, imported in an engine process that vLLM spawned: such a process must not
    # outlive the worker (a worker killed with SIGKILL would leave it holding its memory).
    from shared.orphans import die_with_parent

    die_with_parent()

from shared.lifecycle import run_until_signal
from shared.telemetry import setup_logging

from services.worker.service import EngineDied, build_worker
from services.worker.settings import WorkerSettings

EXIT_ENGINE_DIED = 3


def main() -> None:
    setup_logging("worker")
    service = build_worker(WorkerSettings.from_env())
    try:
        run_until_signal(service.serve)
    except EngineDied as exc:
        logging.getLogger("worker").error("%s; exiting", exc)
        sys.exit(EXIT_ENGINE_DIED)


if __name__ == "__main__":
    main()
