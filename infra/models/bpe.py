"""A byte-level BPE tokenizer trained locally (no hub access), wrapped for transformers."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Debian installs these on every machine; any local text would do.
DEFAULT_CORPUS = Path("/usr/share/common-licenses")


def corpus_files(root: Path = DEFAULT_CORPUS) -> list[str]:
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    if not files:
        raise SystemExit(f"no training text found under {root}")
    return files


def train_bpe(vocab_size: int, special_tokens: list[str], files: list[str]) -> Tokenizer:
    """Train a byte-level BPE; special tokens take the first ids, in the given order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(files, trainer)
    return tok


def wrap(tok: Tokenizer, *, bos: str | None, eos: str, pad: str | None, chat_template: str,
         model_max_length: int) -> PreTrainedTokenizerFast:
    # No post-processor: encode() never adds BOS by itself; the chat template writes it.
    # So add_special_tokens=True and False give the same ids for chat prompts.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        chat_template=chat_template,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
