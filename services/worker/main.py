from __future__ import annotations

import logging
import os
import sys
import traceback

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
    code = 0
    try:
        run_until_signal(service.serve)
    except EngineDied as exc:
        logging.getLogger("worker").error("%s; exiting", exc)
        code = EXIT_ENGINE_DIED
    except SystemExit as exc:  # a second signal: exit now
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # Everything of ours is closed by now, and vLLM has stopped (or killed) its engine
    # processes, which die with us anyway. Exit at once: multiprocessing's exit handler
    # joins the engine process, and one that hung in its own teardown after vLLM killed it
    # held a worker's exit for ten minutes (seen once in a rolling restart), and with it
    # the worker's restart.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
