"""Synthetic prompts that the shared token counter reads as a target length.

Each prompt is made of short lowercase words with a leading space; the shared
:class:`lpu_protocol.tokens.EstimateCounter` charges each such word one token, and the
Llama-3-style template adds a fixed overhead per request, so a prompt built here
counts as ``target`` tokens (exactly under the estimate, approximately under a
real tokenizer). A per-request prefix keeps prompts distinct, so nothing
downstream can serve one request from another's cache.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from lpu_protocol.tokens import TEMPLATE_BOS, TEMPLATE_PER_MESSAGE, TEMPLATE_REPLY_PRIMER

__all__ = ["PromptFactory", "template_overhead"]

_WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "alpha bold cable dawn eager fable glide hazel ivory jolly kite lemon mango noble ocean"
    " pearl quiet river solar tiger umbra vivid wheat yield zesty amber brisk cedar drift"
    " ember frost grove haven inlet jewel karma lunar maple nectar orbit prism quill raven"
    " sable tidal unity valor willow xenon yonder zephyr"
).split()
ApiKind = Literal["chat", "completion"]


def template_overhead(kind: ApiKind) -> int:
    """Tokens the counter adds around the text of a one-message request."""
    if kind == "chat":
        return TEMPLATE_BOS + TEMPLATE_PER_MESSAGE + TEMPLATE_REPLY_PRIMER
    return TEMPLATE_BOS


class PromptFactory:
    """Builds request bodies whose prompt counts as a given number of tokens."""

    def __init__(self, rng: np.random.Generator, pool_words: int = 65_536) -> None:
        self._pool = [" " + _WORDS[i] for i in rng.integers(0, len(_WORDS), size=pool_words)]
        self._rng = rng

    def text(self, tokens: int, tag: str) -> str:
        """Text of ``tokens`` one-token words (``tokens`` >= 1), starting with ``tag``.

        ``tag`` must be one lowercase word of at most 6 letters per 1 token it is
        worth; it is counted as one of the ``tokens``.
        """
        words = max(tokens, 1) - 1
        start = int(self._rng.integers(0, len(self._pool)))
        chunks: list[str] = [tag]
        while words > 0:
            take = min(words, len(self._pool) - start)
            chunks.append("".join(self._pool[start : start + take]))
            words -= take
            start = 0
        return "".join(chunks)

    def body(
        self,
        kind: ApiKind,
        model: str,
        prompt_tokens: int,
        max_tokens: int,
        index: int,
    ) -> dict[str, Any]:
        """A streaming request body with usage reporting, for ``/v1/chat/completions``
        (``kind="chat"``) or ``/v1/completions``."""
        content = max(prompt_tokens - template_overhead(kind), 1)
        text = self.text(content, _tag(index))
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        return body


def _tag(index: int) -> str:
    """A one-token word unique per index below 26**6 (letters only, <= 6 long)."""
    letters = []
    n = index
    for _ in range(6):
        n, r = divmod(n, 26)
        letters.append(chr(ord("a") + r))
    return "".join(reversed(letters))
