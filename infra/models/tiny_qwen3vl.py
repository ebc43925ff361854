"""Build a tiny random-weight Qwen3-VL-MoE model (vision encoder + MoE text model) for vLLM.

A locally trained byte-level BPE with Qwen's special vision tokens, a Qwen-style chat
template that writes one image placeholder per image part, and a Qwen2-VL image
processor saved beside it, so `AutoProcessor.from_pretrained(folder)` works offline.

    python -m infra.models.tiny_qwen3vl [--out DIR]

The last line printed is the model folder's absolute path.
"""

from __future__ import annotations

import json
from pathlib import Path

from infra.models.bpe import corpus_files, train_bpe, wrap
from infra.models.folder import build_atomically, cli

DEFAULT_OUT = Path(__file__).resolve().parents[2] / ".cache" / "models" / "sluice-tiny-qwen3vl"

# Trained first, so they take ids 0..7 in this order.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]
EOT_ID, IM_END_ID = 0, 2
VISION_START_ID, VISION_END_ID, IMAGE_ID, VIDEO_ID = 3, 4, 5, 6

# Content may be a string or OpenAI-style parts; each image part becomes one placeholder
# run, which the processor (or Sluice's tokenizer) expands to the image's token count.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MAX_LEN = 4096
PATCH, MERGE, TEMPORAL = 8, 2, 2
# One image is at most 256x256 pixels after resizing: (256/16)^2 = 256 tokens.
MIN_PIXELS, MAX_PIXELS = 32 * 32, 256 * 256

TEXT = dict(
    vocab_size=2048, hidden_size=128, intermediate_size=256,
    moe_intermediate_size=48,  # != hidden/2: a wrongly laid out expert tensor cannot load
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    num_local_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True,
    max_position_embeddings=MAX_LEN, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                     "mrope_section": [6, 5, 5], "mrope_interleaved": True},  # sums to head_dim/2
)
VISION = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
    patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL,
    out_hidden_size=128, num_position_embeddings=256, deepstack_visual_indexes=[0],
)


def build(out: Path, seed: int = 0) -> Path:
    return build_atomically(out, lambda folder: _fill(folder, seed))


def _fill(work: Path, seed: int) -> None:
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    tok = wrap(train_bpe(TEXT["vocab_size"], SPECIAL, corpus_files()),
               bos=None, eos="<|im_end|>", pad="<|endoftext|>",
               chat_template=CHAT_TEMPLATE, model_max_length=MAX_LEN)
    assert tok.convert_tokens_to_ids(SPECIAL) == list(range(len(SPECIAL)))
    patching = dict(patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            **patching, size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}),
        video_processor=Qwen3VLVideoProcessor(**patching),
        tokenizer=tok, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(work)

    torch.manual_seed(seed)
    config = Qwen3VLMoeConfig(
        text_config=dict(TEXT, eos_token_id=IM_END_ID, pad_token_id=EOT_ID),
        vision_config=VISION, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID,
        tie_word_embeddings=False)
    model = Qwen3VLMoeForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = IM_END_ID
    model.save_pretrained(work, safe_serialization=True)
    _patch_for_vllm(work)


def _patch_for_vllm(folder: Path) -> None:
    """vLLM and real checkpoints store fused experts as gate_up [E,H,2I] and down [E,I,H];
    transformers 5 saves [E,2I,H] and [E,H,I]. It also no longer writes norm_topk_prob."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    hidden, inter = TEXT["hidden_size"], TEXT["moe_intermediate_size"]
    for name, t in tensors.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            assert t.shape[1:] == (2 * inter, hidden), (name, t.shape)
            tensors[name] = t.transpose(1, 2).contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            assert t.shape[1:] == (hidden, inter), (name, t.shape)
            tensors[name] = t.transpose(1, 2).contiguous()
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(weights), metadata={"format": "pt"})
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["text_config"]["norm_topk_prob"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> None:
    cli(__doc__.splitlines()[0], DEFAULT_OUT, build, "tiny Qwen3-VL-MoE model")


if __name__ == "__main__":
    main()
