"""Build a tiny random-weight DeepSeek-V3-architecture MoE model that vLLM can serve.

MLA attention, one shared expert, routed experts with sigmoid / noaux_tc gating,
a locally trained byte-level BPE and a chat template. No hub access.

    python -m infra.models.tiny_dsv3 [--out DIR]

The last line printed is the model folder's absolute path.
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.models.bpe import corpus_files, train_bpe, wrap
from infra.models.folder import build_atomically, cli

DEFAULT_OUT = Path(__file__).resolve().parents[2] / ".cache" / "models" / "sluice-tiny-dsv3"

SPECIAL = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unsupported role: ' + m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Sizes from ../shared/NOTES.md; MLA needs kv_lora_rank + qk_rope_head_dim == 576 on vLLM CPU.
# moe_intermediate_size != hidden_size / 2 so a transposed expert tensor cannot load silently.
ARCH = dict(
    vocab_size=2048,
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=48,
    num_hidden_layers=2,
    first_k_dense_replace=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    q_lora_rank=64,
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    qk_nope_head_dim=64,
    v_head_dim=64,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    max_position_embeddings=4096,
)


def build(out: Path, seed: int = 0) -> Path:
    return build_atomically(out, lambda folder: _fill(folder, seed))


def _fill(work: Path, seed: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    tok = wrap(
        train_bpe(ARCH["vocab_size"], SPECIAL, corpus_files()),
        bos="<|bos|>", eos="<|eos|>", pad="<|pad|>",
        chat_template=CHAT_TEMPLATE, model_max_length=ARCH["max_position_embeddings"],
    )
    assert tok.convert_tokens_to_ids(SPECIAL[:3]) == [BOS_ID, EOS_ID, PAD_ID]
    tok.save_pretrained(work)

    torch.manual_seed(seed)
    config = DeepseekV3Config(
        **ARCH, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(work, safe_serialization=True)
    _patch_for_vllm(work, load_file, save_file, torch)


def _patch_for_vllm(folder: Path, load_file, save_file, torch) -> None:
    """Add what vLLM's DeepSeek-V3 loader requires and transformers does not save."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["topk_method"] = "noaux_tc"
    cfg["scoring_func"] = "sigmoid"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")

    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    for layer in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        name = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
        tensors.setdefault(name, torch.zeros(cfg["n_routed_experts"], dtype=torch.float32))
    save_file(tensors, str(weights), metadata={"format": "pt"})


def main() -> None:
    cli(__doc__.splitlines()[0], DEFAULT_OUT, build, "tiny DeepSeek-V3 MoE model")


if __name__ == "__main__":
    main()
