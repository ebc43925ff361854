# Run services.worker.main as the main module rather than this file: multiprocessing's spawn
# (vLLM starts its engine processes with it) re-imports the main module in each child, but
# never a package's __main__. There, main.py ties the engine process to its parent.
import runpy

if __name__ == "__main__":
    runpy.run_module("services.worker.main", run_name="__main__", alter_sys=True)
