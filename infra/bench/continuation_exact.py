"""Does a greedy continuation from a prefix reproduce the undisturbed run? vLLM's offline
engine alone, no Sluice: generate N tokens, then continue from the prompt plus the first k
of them, and compare. This is what a takeover does (it prefills the prefix in one pass
where the first run built it one decode step at a time), so it bounds what a takeover can
reproduce on a given model and dtype.

    python -m infra.bench.continuation_exact MODEL_DIR [--dtype bfloat16] [--trials 4]

Prints one line per trial and prefix length: "exact" or the first token that differs.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=800)
    parser.add_argument("--prefixes", type=int, nargs="+", default=[100, 400])
    args = parser.parse_args()
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=2048, enforce_eager=True)
    tokenizer = llm.get_tokenizer()

    def greedy(ids: list[int], n: int) -> list[int]:
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        (out,) = llm.generate(TokensPrompt(prompt_token_ids=ids), params, use_tqdm=False)
        return list(out.outputs[0].token_ids)

    exact = total = 0
    for trial in range(args.trials):
        prompt = tokenizer.encode(f"Exactness check {trial}: once upon a time")
        full = greedy(prompt, args.tokens)
        for k in args.prefixes:
            got = full[:k] + greedy(prompt + full[:k], args.tokens - k)
            diff = next((i for i, (a, b) in enumerate(zip(full, got)) if a != b), None)
            total += 1
            exact += diff is None
            print(f"{args.dtype} trial {trial} prefix {k}: "
                  + ("exact" if diff is None else f"first difference at token {diff} "
                                                  f"({diff - k} after the prefix)"), flush=True)
    print(f"{exact} of {total} continuations reproduced the undisturbed run", flush=True)


if __name__ == "__main__":
    main()
