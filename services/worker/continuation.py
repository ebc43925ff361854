"""TokenizedRequest (+ the stream stored so far) → the engine requests that produce the rest.

A fresh request is one engine request for all its choices. A request taken over from
another worker continues each unfinished choice from its stored tokens: the prompt is the
original prompt followed by that choice's tokens, and the budgets shrink by what was
generated. Greedy decoding then yields exactly the tokens an undisturbed run would have.

Not identical after a takeover (documented in the README): sampled tokens (the seed is
reused, but the sampler's random state restarts at the takeover point), presence and
frequency penalties (vLLM counts only the new tokens as output), and a stop string that
straddles the takeover point.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from shared.contracts import Sampling, TokenizedRequest


@dataclass(frozen=True, slots=True)
class EngineRequest:
    engine_id: str  # vLLM's request id
    choice: int | None  # None: every choice of the request; else the one it generates
    prefix: list[int]  # generated tokens that follow the prompt (a continuation's context)
    sampling: Sampling


@dataclass(frozen=True, slots=True)
class Plan:
    requests: list[EngineRequest]
    complete: list[int]  # choices that reached their token budget already


def fresh(req: TokenizedRequest) -> Plan:
    return Plan([EngineRequest(req.request_id, None, [], req.sampling)], [])


def continued(req: TokenizedRequest, epoch: int, stored: dict[int, list[int]],
              unfinished: list[int]) -> Plan:
    """One engine request per unfinished choice, each from its stored tokens."""
    s = req.sampling
    assert s.max_tokens is not None, "the tokenizer resolves max_tokens"
    requests, complete = [], []
    for index in unfinished:
        tokens = stored.get(index, [])
        remaining = s.max_tokens - len(tokens)
        if remaining <= 0:
            complete.append(index)
            continue
        seed = None if s.seed is None else s.seed + (index if s.n > 1 else 0)  # as vLLM seeds choices
        sampling = msgspec.structs.replace(
            s, n=1, max_tokens=remaining, min_tokens=max(0, s.min_tokens - len(tokens)), seed=seed)
        requests.append(EngineRequest(f"{req.request_id}.{epoch}.{index}", index, list(tokens), sampling))
    return Plan(requests, complete)
