"""Run the whole stack locally: Kafka, Redis, and every service.

    python -m infra.stack

Serves until Ctrl-C or SIGTERM, then stops everything it started, gateway first. Every
process is supervised: one that exits unexpectedly is restarted with backoff (and logged),
as compose's `restart:` or Kubernetes would. Nothing outlives the launcher, even when it is
killed with SIGKILL (infra.watchdog).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from infra.localinfra import ROOT, local_infra, port_or_free
from infra.procs import gateway_urls, start_services
from infra.supervise import Supervisor


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    parent = os.getppid()
    run_dir = Path(os.environ.get("SLUICE_RUN_DIR", ROOT / ".cache" / "run"))
    echo = os.environ.get("SLUICE_ECHO_LOGS", "0") == "1"
    with ExitStack() as stack:
        endpoints = stack.enter_context(local_infra(
            run_dir, kafka_port=port_or_free(int(os.environ.get("SLUICE_KAFKA_PORT", "9092"))),
            redis_port=port_or_free(int(os.environ.get("SLUICE_REDIS_PORT", "6379")))))
        env = {**os.environ, **endpoints.env()}
        print(f"Kafka {endpoints.kafka_bootstrap}, Redis {endpoints.redis_url} (state), "
              f"{endpoints.redis_cache_url} (cache)", flush=True)
        procs, url = start_services(stack, env, run_dir, echo=echo,  # stopped before the infra
                                    neighbours=list(endpoints.pids.values()))
        supervisor = Supervisor([endpoints.units, procs], lambda line: print(line, flush=True))
        stack.callback(supervisor.stop)  # unwinds first: no restarts while stopping
        supervisor.start()
        urls = gateway_urls(procs)
        also = f" (and {', '.join(u + '/v1' for u in urls[1:])})" if len(urls) > 1 else ""
        print(f"Sluice is serving at {url}/v1{also} (ready in {time.monotonic() - started:.1f}s); "
              f"logs in {run_dir}. Ctrl-C stops it.", flush=True)
        while not stop.is_set():
            if os.getppid() != parent:  # `make` was killed without passing the signal on
                stop.set()
            stop.wait(1.0)
        print("stopping", flush=True)


if __name__ == "__main__":
    main()
