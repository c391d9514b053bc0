"""Prompt token counting, one implementation for the router and the emulator.

Two counters share the :class:`TokenCounter` protocol:

* :class:`EstimateCounter` (default): a fast estimator with no vocabulary. It
  splits text the way byte-level BPE pre-tokenizers do (words with their leading
  space, digit groups of three, punctuation runs, whitespace) and charges each
  piece by its length. It is tuned to over-count rather than under-count: on
  English prose and code it reads high, and it under-counts a real Llama-3-class
  tokenizer by at most the margin documented in ``ESTIMATE_UNDERCOUNT_MARGIN``.
  Buckets therefore keep that margin of their compiled shape free.
* :class:`HFTokenizerCounter`: an exact count from a Hugging Face
  ``tokenizer.json`` (the ``tokenizers`` package), for deployments that must
  count as their model does.

Chat requests are counted as a Llama-3-style chat template renders them:
``BOS`` + for each message ``<|start_header_id|>role<|end_header_id|>\\n\\n`` +
content + ``<|eot_id|>`` (content + 4 tokens), + the assistant header that
primes the reply (4 tokens). Tool definitions are counted as their JSON text.
This is approximate for other templates by a few tokens per message.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Protocol

from router.openai_api import CompletionRequest

__all__ = [
    "ESTIMATE_UNDERCOUNT_MARGIN",
    "EstimateCounter",
    "HFTokenizerCounter",
    "TokenCounter",
    "prompt_tokens",
]

ESTIMATE_UNDERCOUNT_MARGIN = 0.10
"""Largest fraction by which EstimateCounter may under-count a real BPE tokenizer."""

TEMPLATE_BOS = 1
TEMPLATE_PER_MESSAGE = 4
TEMPLATE_REPLY_PRIMER = 4


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


# Letters (with an optional leading space), digits in groups of up to 3,
# non-space symbol runs, whitespace runs.
_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+")


class EstimateCounter:
    """Vocabulary-free estimate of a byte-level BPE token count."""

    name = "estimate"

    def count(self, text: str) -> int:
        if not text:
            return 0
        if text.isascii():
            return self._count_ascii(text)
        total = 0
        for piece in _PIECE.findall(text):
            if piece.isascii():
                total += self._count_ascii(piece)
            else:
                # Non-Latin scripts: roughly one token per character in large
                # vocabularies, more for rare symbols; charge by UTF-8 bytes.
                total += sum(1 if len(ch.encode()) <= 2 else 2 for ch in piece if not ch.isspace())
                total += 1 if piece[0].isspace() else 0
        return total

    @staticmethod
    def _count_ascii(text: str) -> int:
        total = 0
        for piece in _PIECE.findall(text):
            n = len(piece.lstrip(" ")) if piece[0] == " " and len(piece) > 1 else len(piece)
            c = piece[-1]
            if c.isalpha():
                total += 1 if n <= 6 else math.ceil(n / 4)
            elif c.isdigit():
                total += 1
            elif c.isspace():
                total += 1 if n <= 16 else math.ceil(n / 16)
            else:
                total += math.ceil(n / 2)
        return total


class HFTokenizerCounter:
    """Exact counts from a Hugging Face ``tokenizer.json``."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "counting with a tokenizer.json needs the 'tokenizers' package:"
                " pip install 'lpu-router[tokenizers]'"
            ) from exc
        self._tok = Tokenizer.from_file(str(path))
        self.name = f"tokenizer:{Path(path).name}"

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def prompt_tokens(req: CompletionRequest, counter: TokenCounter) -> int:
    """Tokens the backend will see as the prompt of ``req``, template included."""
    if req.kind == "completion":
        return req.prompt_token_ids + counter.count(req.prompt) + TEMPLATE_BOS
    total = TEMPLATE_BOS + TEMPLATE_REPLY_PRIMER + counter.count(req.extra_text)
    for m in req.messages:
        total += TEMPLATE_PER_MESSAGE + counter.count(m.text)
    return total
