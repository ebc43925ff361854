# vLLM starts its engine core in a spawned process, which re-imports __main__: keep the guard.
from services.worker.main import main

if __name__ == "__main__":
    main()
