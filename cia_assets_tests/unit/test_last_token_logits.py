"""The local model server's Llama computes logits for each batch's last token only, and its
log-probabilities are llama-cpp-python's own (`logits_all`) to the digit."""

from __future__ import annotations

from typing import Any

import pytest

from cia_assets.lib.serving.idle_llama_server import last_token_logits_llama
from cia_assets.lib.serving.llm_server import packaged_gguf

# Several prompt batches, so a row written for the wrong token of a batch shows.
N_BATCH = 16
MESSAGES = [
    {"role": "system", "content": "You explain code in one sentence."},
    {
        "role": "user",
        "content": "def add(a, b):\n    return a + b\n\ndef twice(x):\n    return add(x, x)\n\n"
        "What does `twice` return?",
    },
]


def _top_logprobs(llm: Any, *, stream: bool) -> list[list[tuple[str, float]]]:
    llm.reset()
    options = {"messages": MESSAGES, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    if stream:
        chunks = [c for c in llm.create_chat_completion(**options, stream=True) if c["choices"]]
        contents = [
            c["choices"][0]["logprobs"]["content"][0] for c in chunks if c["choices"][0].get("logprobs")
        ]
    else:
        contents = llm.create_chat_completion(**options)["choices"][0]["logprobs"]["content"]
    return [
        [(top["token"], round(float(top["logprob"]), 4)) for top in content["top_logprobs"]]
        for content in contents
    ]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_last_token_logits_give_llama_cpps_own_log_probabilities(stream: bool) -> None:
    from llama_cpp import Llama

    options = {
        "model_path": str(packaged_gguf()),
        "n_ctx": 512,
        "n_batch": N_BATCH,
        "n_threads": 2,
        "verbose": False,
    }
    reference = Llama(**options, logits_all=True)
    expected = _top_logprobs(reference, stream=stream)
    del reference
    served = last_token_logits_llama()(**options)
    assert len(expected) == 4
    assert _top_logprobs(served, stream=stream) == expected
    # The same prompt again starts from the server's cached prefix: still the same figures.
    assert _top_logprobs(served, stream=stream) == expected
