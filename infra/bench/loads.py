"""The loads of `make bench` and the `vllm bench serve` arguments that describe them.

Every target gets the same prompts: the HTTP targets through vLLM's random dataset with
one fixed seed, the offline engine by building that same dataset through vLLM's Python
API from the very same dataset arguments (`dataset_args`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEED = 1234
INPUT_LEN = 256
OUTPUT_LEN = 128


@dataclass(frozen=True, slots=True)
class Load:
    name: str
    concurrency: int
    num_prompts: int
    input_len: int = INPUT_LEN  # tokens per prompt after the shared prefix
    output_len: int = OUTPUT_LEN  # exact: every request ignores EOS
    prefix_len: int = 0  # tokens every prompt shares (vLLM's --random-prefix-len)
    # Fixed, and distinct per load: with one seed for all, every load would start with the
    # same prompts, and Sluice's token cache would answer the repeats.
    seed: int = SEED

    @property
    def description(self) -> str:
        shared = f"{self.prefix_len} shared + " if self.prefix_len else ""
        return (f"c={self.concurrency}, {shared}{self.input_len} in / {self.output_len} out, "
                f"{self.num_prompts} prompts, seed {self.seed}")

    def as_json(self) -> dict:
        return {**asdict(self), "description": self.description}

    def dataset_args(self) -> list[str]:
        """vLLM's random dataset: fixed lengths (range ratio 0), fixed seed."""
        return [
            "--dataset-name", "random",
            "--random-input-len", str(self.input_len),
            "--random-output-len", str(self.output_len),
            "--random-prefix-len", str(self.prefix_len),
            "--random-range-ratio", "0",
            "--num-prompts", str(self.num_prompts),
            "--seed", str(self.seed),
        ]

    @property
    def warmups(self) -> int:
        # One full wave at the load's concurrency, so the first measured requests find a
        # warm engine and warm connections.
        return self.concurrency


# Prompt counts give each load roughly 10-30 s on a 2-core CPU host with the tiny model,
# so the whole comparison (three targets and the transport ceiling) stays well under
# 20 minutes.
FULL: tuple[Load, ...] = (
    Load("c1", 1, 24, seed=SEED + 1),
    Load("c8", 8, 64, seed=SEED + 8),
    Load("c32", 32, 160, seed=SEED + 32),
    Load("c64", 64, 256, seed=SEED + 64),
    # Many prompts behind one long shared prefix, as with a long common system prompt.
    Load("shared-prefix-c32", 32, 96, input_len=128, prefix_len=1024, seed=SEED + 1024),
)

# Played once on each HTTP target before any load, and not measured: a fresh stack is
# slow until its JIT and caches warm up (Sluice's c1 TTFT p50 over its first four runs:
# 41, 35, 27, 26 ms; Kafka's broker is a JVM). A production deployment runs warm.
WARMUP = Load("warm-up", 8, 320, output_len=16, seed=SEED - 1)
QUICK_WARMUP = Load("warm-up", 8, 64, output_len=16, seed=SEED - 1)

# For development: the same shapes, a few prompts each.
QUICK: tuple[Load, ...] = (
    Load("c1", 1, 4, seed=SEED + 1),
    Load("c32", 32, 32, seed=SEED + 32),
    Load("shared-prefix-c32", 32, 32, input_len=128, prefix_len=1024, seed=SEED + 1024),
)


def pick(names: list[str] | None, quick: bool) -> tuple[Load, ...]:
    loads = QUICK if quick else FULL
    if not names:
        return loads
    chosen = tuple(load for load in loads if load.name in names)
    unknown = set(names) - {load.name for load in chosen}
    if unknown:
        raise SystemExit(f"unknown load(s) {sorted(unknown)}; known: {[l.name for l in loads]}")
    return chosen
