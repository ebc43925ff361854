"""Sampling (wire) → vLLM SamplingParams."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.contracts import Sampling

if TYPE_CHECKING:
    from vllm import SamplingParams


def to_sampling_params(s: Sampling) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k if s.top_k > 0 else 0,
        max_tokens=s.max_tokens,
        min_tokens=s.min_tokens,
        stop=list(s.stop) or None,
        seed=s.seed,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        ignore_eos=s.ignore_eos,
        logprobs=s.logprobs,
        output_kind=RequestOutputKind.DELTA,
    )
