"""Deterministic generated text: the same prompt and seed always give the same tokens.

One emulated token is one vocabulary entry (a word with its leading space, or a
punctuation mark). A request's tokens are drawn by a generator seeded from a
hash of its prompt text and its ``seed`` parameter, so a retry, a replay or a
second replica produce identical text. The hot path never encodes anything:
every entry's text and JSON-string bytes are precomputed once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from lpu_protocol.openai_api import CompletionRequest

__all__ = ["VOCABULARY", "TokenText", "request_key", "token_ids"]

_WORD_LIST = (
    "the of and to in is that for it as with was on be by this are from at or an have not"
    " which but all were can one their there been has more when will would if so what out"
    " about up into them some could time these two may then do first any my now such like"
    " our over man me even most made after also did many before must through back years"
    " where much your way well down should because each just those people how too little"
    " state good very make world still own see men work long get here between both life"
    " being under never day same another know while last might us great old year off come"
    " since against go came right used take three states himself few house use during"
    " without again place around however home small found thought went say part once"
    " general high upon school every does got united left number course war until always"
    " away something fact though water less public put think almost hand enough far took"
    " head yet government system better set told nothing night end why called didn find"
    " schedule slot token compiler chip deterministic latency queue stream model shape"
)
_WORDS = _WORD_LIST.split()
VOCABULARY: tuple[str, ...] = (*(" " + w for w in _WORDS), ".", ",", ";", "\n\n")
"""Every token text the emulator can produce."""

_PUNCT_FROM = len(_WORDS)


class TokenText:
    """Precomputed text and JSON-string bytes of every vocabulary entry."""

    __slots__ = ("json", "text")

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY) -> None:
        self.text: tuple[str, ...] = tuple(vocabulary)
        self.json: tuple[bytes, ...] = tuple(json.dumps(t).encode() for t in self.text)

    def join(self, ids: Sequence[int]) -> str:
        """The full text of a token id sequence."""
        text = self.text
        return "".join(text[i] for i in ids)


def request_key(req: CompletionRequest) -> bytes:
    """Bytes identifying a request's prompt and seed (what the text depends on)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(req.kind.encode())
    h.update(str(req.seed).encode())
    if req.kind == "chat":
        for m in req.messages:
            h.update(b"\x00" + m.role.encode() + b"\x01" + m.text.encode())
        h.update(b"\x02" + req.extra_text.encode())
    else:
        h.update(b"\x03" + req.prompt.encode() + str(req.prompt_token_ids).encode())
    return h.digest()


_BLOCK = 256


def token_ids(key: bytes, n: int) -> list[int]:
    """``n`` token ids derived from ``key``: words, with punctuation now and then.

    Tokens come in blocks of 256, each from its own generator, so a longer
    answer to the same prompt and seed starts with the shorter one. The first
    token of a block is a word and punctuation never follows punctuation within
    a block, so the text reads as (nonsense) sentences.
    """
    root = int.from_bytes(key[:8], "little")
    out: list[int] = []
    for block in range((n + _BLOCK - 1) // _BLOCK):
        out += _block(root, block)
    return out[:n]


@functools.lru_cache(maxsize=1024)
def _block(root: int, block: int) -> tuple[int, ...]:
    """One block of :func:`token_ids`; kept for repeated prompts (seeding a generator costs
    tens of microseconds, a request's whole share of the emulator's CPU elsewhere)."""
    rng = np.random.default_rng([root, block])
    words = rng.integers(0, _PUNCT_FROM, size=_BLOCK)
    marks = rng.integers(_PUNCT_FROM, len(VOCABULARY), size=_BLOCK)
    use_mark = rng.random(size=_BLOCK) < 0.08
    use_mark[0] = False
    use_mark[1:] &= ~use_mark[:-1]
    return tuple(np.where(use_mark, marks, words).tolist())
