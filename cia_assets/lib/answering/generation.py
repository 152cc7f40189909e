"""One streamed completion of an answer: the model's text as it arrives, passed through the
citation check as deltas, with when it started and what it cost."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cia_assets.lib.answering.answer import NOT_FOUND_MARKER, AnswerDelta, AnswerError
from cia_assets.lib.answering.citations import CitationFilter, SourceHeaderRestater
from cia_assets.lib.serving.first_token import first_token_candidates

log = logging.getLogger(__name__)
# How many of the first token's likeliest candidates are read: "NOT" is among them whenever it
# has a probability worth acting on.
TOP_LOGPROBS = 10


def not_found_odds(client: Any, endpoint: Any, messages: list[dict[str, str]]) -> float | None:
    """How much likelier the model's answer to `messages` starts with NOT FOUND than with its
    likeliest other first token, from the first token's log-probabilities in a one-token
    request (the answer's own request then reuses the prompt the server has just read).
    None when the endpoint returns none.

    A small model rarely writes NOT FOUND when shown code near the subject, yet gives it
    more weight for an absent feature. Odds rather than the probability: a flat first-token
    distribution (many ways to begin) makes a small probability of NOT mean more. On 109 real
    and 24 absent-feature dev-set questions they ranked real above absent with AUC 0.89 where
    the retrieved code did not support the question (README, "Measuring answers"), hence two
    bars: `answering.abstain_not_found_odds` (0.3) and `abstain_unsupported_odds` (0.05)."""
    try:
        candidates = first_token_candidates(client, endpoint.request_model, messages, top=TOP_LOGPROBS)
    except Exception as error:
        import openai

        # A server that refuses the parameters (400, 404, 422) answers without the odds; one
        # that refuses the caller (401, 403) or is busy (429) fails like the answer would.
        if (
            isinstance(error, openai.APIStatusError)
            and 400 <= error.status_code < 500
            and error.status_code not in (401, 403, 429)
        ):
            log.warning(
                "%s refused the log-probabilities request (%s): answering without the model's odds",
                endpoint.base_url,
                error,
            )
            return None
        _raise_endpoint_failure(endpoint, error)
    return None if candidates is None else first_token_odds(candidates)


def _raise_endpoint_failure(endpoint: Any, error: Exception) -> NoReturn:
    """A failed request to the model endpoint: its API errors become an `AnswerError` naming
    the endpoint, anything else is raised as it was."""
    import openai

    if isinstance(error, openai.OpenAIError):
        raise AnswerError(f"the model endpoint {endpoint.base_url} failed: {error}") from error
    raise error


def first_token_odds(candidates: list[tuple[str, float]]) -> float:
    """P(a NOT FOUND token) / P(the likeliest other token), from (token, log-probability)."""
    not_found = sum(math.exp(logprob) for token, logprob in candidates if starts_not_found(token))
    other = max(
        (math.exp(logprob) for token, logprob in candidates if not starts_not_found(token)), default=0.0
    )
    return not_found / other if other > 0 else (math.inf if not_found > 0 else 0.0)


def starts_not_found(token: str) -> bool:
    """A first token that begins NOT FOUND (`NOT`, ` Not`, `NOT FOUND`), not `Note` or `No`."""
    word = token.strip().upper()
    return len(word) >= 3 and (word.startswith(NOT_FOUND_MARKER) or NOT_FOUND_MARKER.startswith(word))


@dataclass
class Generation:
    raw_parts: list[str] = field(default_factory=list)
    chunks: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None
    usage: dict[str, int | None] = field(
        default_factory=lambda: {"prompt_tokens": None, "completion_tokens": None}
    )

    @property
    def raw(self) -> str:
        return "".join(self.raw_parts)

    def run(
        self,
        client: Any,
        endpoint: Any,
        messages: list[dict[str, str]],
        restater: SourceHeaderRestater,
        checker: CitationFilter,
        *,
        max_tokens: int,
        temperature: float,
    ) -> Iterator[AnswerDelta]:
        """Stream the completion; yield it as it comes, its repeated source headers restated
        (`restater`) and its markers checked (`checker`)."""
        released = 0  # characters of the (left-stripped) raw answer fed to the checker
        finish_reason: str | None = None
        try:
            stream = client.chat.completions.create(
                model=endpoint.request_model,
                messages=messages,
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
                # vLLM and hosted APIs report usage at the end of a stream when asked.
                stream_options={"include_usage": True},
            )
            # Closed when the reader stops early too (a client that went away): a stream
            # left to the garbage collector can deadlock the client's connection pool.
            with stream:
                for chunk in stream:
                    if chunk.usage is not None:
                        self.usage = {
                            "prompt_tokens": chunk.usage.prompt_tokens,
                            "completion_tokens": chunk.usage.completion_tokens,
                        }
                    if not chunk.choices:
                        continue
                    finish_reason = chunk.choices[0].finish_reason or finish_reason
                    piece = chunk.choices[0].delta.content or ""
                    if not piece:
                        continue
                    self.chunks += 1
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    self.raw_parts.append(piece)
                    raw = self.raw.lstrip()
                    if NOT_FOUND_MARKER.startswith(raw) or raw.startswith(NOT_FOUND_MARKER):
                        continue  # the model's "not found" reply is replaced, never streamed
                    visible = checker.feed(restater.feed(raw[released:]))
                    released = len(raw)
                    if visible:
                        yield AnswerDelta(visible)
        except Exception as error:
            _raise_endpoint_failure(endpoint, error)
        if finish_reason is None:
            # Every OpenAI-compatible server ends a completed stream with a finish_reason (stop,
            # length); a stream that ends without one was cut short (a server that interrupts an
            # answer for the next request, a proxy timing out), and what arrived is no answer:
            # read as one, it was "Not found" for want of a citation.
            raise AnswerError(
                f"the model endpoint {endpoint.base_url} ended the answer before it was finished "
                f"(after {self.chunks} pieces, no finish_reason)"
            )
        self.finished_at = time.perf_counter()
        if self.usage["completion_tokens"] is None:
            from cia_assets.lib.serving.llm_server import count_prompt_tokens

            # llama.cpp's server sends no usage when streaming; it streams one token per chunk.
            prompt_tokens = (
                count_prompt_tokens(endpoint.base_url, messages) if endpoint.engine == "llama_cpp" else None
            )
            self.usage = {"prompt_tokens": prompt_tokens, "completion_tokens": self.chunks}
        tail = checker.feed(restater.finish()) + checker.finish()
        if tail:
            yield AnswerDelta(tail)
