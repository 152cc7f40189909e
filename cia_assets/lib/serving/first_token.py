"""The likeliest first tokens of a model's reply, from a one-token completion: how CIA asks an
OpenAI-compatible endpoint how sure it is (the answer's NOT FOUND odds, the re-ranker's yes/no).
"""

from __future__ import annotations

from typing import Any


def first_token_candidates(
    client: Any, model: str, messages: list[dict[str, str]], *, top: int
) -> list[tuple[str, float]] | None:
    """The `top` likeliest first tokens of the reply to `messages`, as (token, log-probability);
    None when the endpoint sends no log-probabilities. Errors are the client's own.

    Streamed, though it is one token: without streaming llama-cpp-python turns the logits of
    every prompt token into log-probabilities before it returns (a 1,100-token prompt: 16-27 s
    against 6-7 s streamed on 2 cores, and a ~0.6 GB array), where a stream computes only the
    generated token's."""
    candidates: list[tuple[str, float]] | None = None
    # Read to the end and close: a stream left open is closed later by the garbage collector,
    # which can run while the client's connection pool holds its lock (the next request then
    # waits on that lock for ever).
    with client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=1,
        temperature=0,
        stream=True,
        logprobs=True,
        top_logprobs=top,
    ) as stream:
        for chunk in stream:
            choice = chunk.choices[0] if chunk.choices else None
            if candidates is None and choice is not None and choice.logprobs and choice.logprobs.content:
                candidates = [(c.token, c.logprob) for c in choice.logprobs.content[0].top_logprobs or []]
    return candidates
