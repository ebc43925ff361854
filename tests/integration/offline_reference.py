"""vLLM's offline engine on the same model: the reference the pipeline must reproduce.

    python offline_reference.py MODEL_DIR MAX_MODEL_LEN OUT.json < cases.json

(vLLM logs to stdout, so the results go to a file.)

Each case runs alone (batch 1): batching changes low-precision numerics on random weights.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    from vllm import LLM, SamplingParams

    model, max_len, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cases = json.load(sys.stdin)
    with open(os.path.join(model, "config.json")) as f:
        vision = "vision_config" in json.load(f)
    # The same image limit as a Sluice worker's engine (SLUICE_MAX_IMAGES' default).
    extra = {"limit_mm_per_prompt": {"image": 8, "video": 0}} if vision else {}
    llm = LLM(model=model, dtype="bfloat16", max_model_len=max_len, enforce_eager=True, **extra)
    out = []
    for case in cases:
        params = SamplingParams(temperature=0, max_tokens=case["max_tokens"])
        if "messages" in case:
            (result,) = llm.chat(case["messages"], params, use_tqdm=False)
        else:
            (result,) = llm.generate(case["prompt"], params, use_tqdm=False)
        comp = result.outputs[0]
        out.append({"text": comp.text, "token_ids": list(comp.token_ids),
                    "prompt_tokens": len(result.prompt_token_ids), "finish_reason": comp.finish_reason})
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
