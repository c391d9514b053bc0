"""Prompt token counting, one implementation for the router and the emulator.

Two counters share the :class:`TokenCounter` protocol:

* :class:`EstimateCounter` (default): a fast estimator with no vocabulary. It
  splits text the way byte-level BPE pre-tokenizers do (words with their leading
  space, digit groups of three, punctuation runs, whitespace) and charges each
  piece by its length and kind (short words 1, long words 1 per 4 letters,
  random-looking mixed-case runs such as base64 1 per 1.5 letters, each digit
  group 1 plus 1 for a leading space, punctuation 1 per 2 characters, non-Latin
  letters by script: 0.5 per Greek/Cyrillic/Arabic-class letter, 1 per CJK,
  Indic or Thai character, 2 per astral-plane character such as emoji).
  It is tuned to over-count rather than under-count. Calibrated against the
  Llama 3 tokenizer (128k vocabulary) on a 24-sample corpus of prose, code,
  numbers, JSON, URLs, hashes, base64, whitespace, markdown and eleven non-Latin
  scripts (``tests/unit/lpu_protocol/token_corpus.py``): the worst under-count was
  2.2 % (a hex digest); prose and code read 20-50 % high, CJK and Indic scripts
  50-150 % high. ``ESTIMATE_UNDERCOUNT_MARGIN`` (3 %) is that figure rounded
  up, and buckets keep that margin of their compiled shape free when counting
  by estimate. Text unlike the corpus may fall outside the margin; deployments
  that must be exact configure a ``tokenizer.json``.
* :class:`HFTokenizerCounter`: an exact count from a Hugging Face
  ``tokenizer.json`` (the ``tokenizers`` package), for deployments that must
  count as their model does.

Chat requests are counted as a Llama-3-style chat template renders them:
``BOS`` + for each message ``<|start_header_id|>role<|end_header_id|>\\n\\n`` +
content + ``<|eot_id|>`` (content + 4 tokens), + the assistant header that
primes the reply (4 tokens). Tool definitions are counted as their JSON text.
This is approximate for other templates by a few tokens per message.

Bounded work (:func:`count_prompt`, what the router uses): a prompt is counted only as far as
the answer needs. Its count must be exact up to ``limit`` (the largest ``max_seq_len`` of the
request's model: every placeable prompt is counted exactly, because admission, the tenants'
tokens-per-minute and the prompt-token metric use the count); once the running count passes
``limit`` the prompt cannot fit any shape, counting stops and the result is a lower bound
("at least N"). The text is counted in slices (``slice_chars`` characters each, cut where the
count of the parts equals the count of the whole) and the loop gets a turn between slices
(:class:`Pace`), so a cancelled handler stops at the next slice.

No count at all (:func:`prompt_bound`): a token covers at least one byte of its text (byte-level
BPE; SentencePiece with byte fallback may add one prefix piece per text), and the estimator
charges at most one token per byte, so the UTF-8 byte length of the texts, plus one per text,
plus the template's fixed tokens, bounds the count from above in O(messages). On deterministic
hardware the prefill time is a property of the compiled shape, not of the prompt, so when the
bound already fits the model's smallest shape the exact figure changes nothing the router
decides (only the tenants' tokens-per-minute charge needs it): the router counts only prompts
near a bucket boundary.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Protocol

from lpu_protocol.openai_api import CompletionRequest

__all__ = [
    "ESTIMATE_UNDERCOUNT_MARGIN",
    "SLICE_CHARS",
    "EstimateCounter",
    "HFTokenizerCounter",
    "Pace",
    "PromptCount",
    "TokenCounter",
    "count_prompt",
    "prompt_bound",
    "prompt_tokens",
]

ESTIMATE_UNDERCOUNT_MARGIN = 0.03
"""Largest fraction by which EstimateCounter under-counts the Llama 3 tokenizer on the
calibration corpus (measured worst: 2.2 %, rounded up)."""

TEMPLATE_BOS = 1
TEMPLATE_PER_MESSAGE = 4
TEMPLATE_REPLY_PRIMER = 4

SLICE_CHARS = 16_384
"""Characters counted between two turns of the loop: about 0.4-0.8 ms of the estimator on this
project's machines (prose, base64, CJK, emoji, digits)."""


class Pace:
    """Gives the event loop a turn after every ``slice_chars`` characters of counting work.

    One per request, shared by all of its texts, so many small messages are paced like one
    large one. ``turns`` counts the turns given (what tests observe instead of a clock).
    """

    def __init__(self, slice_chars: int = SLICE_CHARS) -> None:
        self.slice_chars = slice_chars
        self.turns = 0
        self._since = 0

    async def spent(self, chars: int) -> None:
        """Record ``chars`` of work; yield to the loop once a slice's worth has accumulated
        (a cancelled task gets its ``CancelledError`` here)."""
        self._since += chars
        if self._since >= self.slice_chars:
            self._since = 0
            self.turns += 1
            await asyncio.sleep(0)


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int:
        """The count of ``text``, in one call (unbounded work: for short text and the emulator)."""
        ...

    async def count_within(self, text: str, budget: int, pace: Pace) -> int:
        """``count(text)`` when it is at most ``budget``; else a number above ``budget`` and
        at most ``count(text)`` (counting stopped early). Work is paced by ``pace``."""
        ...


# Letters of any script (with an optional leading space), digits in groups of up
# to 3, runs of other symbols, underscores, whitespace runs.
_PIECE = re.compile(r" ?[^\W\d_]+| ?[0-9]{1,3}| ?[^\s\w]+|_+|\s+")
# The same pieces for ASCII text, its classes spelled out (a str pattern's \s also matches
# \x1c-\x1f): about twice as fast as the Unicode classes, and most prompts are ASCII.
_ASCII_SPACE = r" \t\n\r\f\v\x1c-\x1f"
_ASCII_PIECE = re.compile(
    rf" ?[A-Za-z]+| ?[0-9]{{1,3}}| ?[^A-Za-z0-9_{_ASCII_SPACE}]+|_+|[{_ASCII_SPACE}]+")
_CACHE_PIECES = 1 << 15
"""Pieces whose cost is remembered, at most (then the memory starts afresh)."""
_CACHE_PIECE_CHARS = 32
"""Longer pieces (long runs, base64) are costed each time: they rarely repeat."""


def _word_cost(word: str) -> int:
    n = len(word)
    if word.isascii():
        # Lower-to-upper changes; none in a lower, upper or capitalized word (most words).
        case_changes = 0 if word.islower() or word.isupper() or word[1:].islower() else \
            sum(1 for a, b in pairwise(word) if a.islower() and b.isupper())
        if n >= 4 and case_changes * 5 >= n:
            # Random-looking mixed case (base64, keys): BPE finds few merges.
            return math.ceil(n / 1.5)
        if n <= 6:
            return 1 + case_changes
        return math.ceil(n / 4) + case_changes
    cost = 0.0
    for ch in word:
        o = ord(ch)
        if o < 0x80:
            cost += 0.34
        elif o < 0x800:  # Latin accents, Greek, Cyrillic, Hebrew, Arabic
            cost += 0.5
        elif o < 0x10000:  # CJK, kana, hangul, Indic, Thai
            cost += 1.0
        else:  # astral plane: emoji, rare CJK
            cost += 2.0
    return max(1, math.ceil(cost))


def _symbol_cost(run: str) -> int:
    if run.isascii():
        return math.ceil(len(run) / 2)
    return sum(1 if ord(ch) < 0x800 else 2 if ord(ch) < 0x10000 else 3 for ch in run)


def _piece_cost(piece: str) -> int:
    """Tokens of one pre-tokenizer piece (a word with its leading space, a digit group, ...)."""
    lead = piece[0] == " " and len(piece) > 1 and not piece.isspace()
    body = piece[1:] if lead else piece
    first = body[0]
    if first.isdigit():
        # Llama-3-class pre-tokenizers split the space before a number off.
        return 2 if lead else 1
    if first.isalpha():
        return _word_cost(body)
    if first.isspace():
        mixed = "\n" in body and body.replace("\n", "") != ""
        return max(1, math.ceil(len(body) / 8)) + (1 if mixed else 0)
    return _symbol_cost(body)


class _PieceCosts(dict[str, int]):
    """Each piece's cost, computed once: a piece's cost depends on the piece alone, and text
    repeats its words, so counting is mostly one dict lookup per piece (in C, via ``map``)."""

    def __missing__(self, piece: str) -> int:
        cost = _piece_cost(piece)
        if len(piece) <= _CACHE_PIECE_CHARS:
            if len(self) >= _CACHE_PIECES:
                self.clear()
            self[piece] = cost
        return cost


_COSTS = _PieceCosts()


def _pattern(text: str) -> re.Pattern[str]:
    return _ASCII_PIECE if text.isascii() else _PIECE


def _piece_floor(piece: str) -> int:
    """A lower bound of the cost of any piece that starts with ``piece`` (a long run whose end
    is not known yet): whitespace costs 1 per 8 characters, every other kind at least 1 per 4
    (the leading space aside)."""
    return (len(piece) - 1) // (8 if piece[-1].isspace() else 4)


class EstimateCounter:
    """Vocabulary-free estimate of a byte-level BPE token count (see the module docstring).

    Slicing is exact: the pieces of a window ``text[pos:pos + n]`` are the text's own pieces,
    except that the window's last piece may be cut short when it ends at the window's end (no
    piece pattern looks behind, and a piece cut by the window end always ends exactly there),
    so that piece is left for the next window. A single piece longer than a window (a 4 MB
    word) is grown by doubling windows, and abandoned as soon as its lower bound alone passes
    the budget.
    """

    name = "estimate"

    def __init__(self, slice_chars: int = SLICE_CHARS) -> None:
        self.slice_chars = slice_chars

    def count(self, text: str) -> int:
        return sum(map(_COSTS.__getitem__, _pattern(text).findall(text)))

    async def count_within(self, text: str, budget: int, pace: Pace) -> int:
        total, pos, end = 0, 0, len(text)
        while pos < end and total <= budget:
            window = text[pos:pos + self.slice_chars]
            pieces = _pattern(window).findall(window)
            step = len(window)
            if pos + step < end and pieces and window.endswith(pieces[-1]):
                step -= len(pieces.pop())  # may be cut short: the next window starts with it
                if not pieces:  # one piece longer than a window
                    cost, length = await self._long_piece(text, pos + step, budget - total,
                                                          pace)
                    total += cost
                    pos += step + length
                    continue
            total += sum(map(_COSTS.__getitem__, pieces))
            pos += step
            await pace.spent(step)
        return total

    async def _long_piece(self, text: str, pos: int, budget: int, pace: Pace) -> tuple[int, int]:
        """(cost, length) of the piece at ``pos``, or (a lower bound above ``budget``, 0)."""
        size = 2 * self.slice_chars
        while True:
            window = text[pos:pos + size]
            match = _pattern(window).match(window)
            assert match is not None, "a window's first piece starts at the window's start"
            piece = match.group()
            await pace.spent(len(window))
            if len(piece) < len(window) or pos + size >= len(text):
                return _piece_cost(piece), len(piece)
            floor = _piece_floor(piece)
            if floor > budget:
                return floor, 0
            size *= 2


HF_INLINE_CHARS = 2_048
"""Text up to this long is tokenized on the loop (about 1.5 ms); longer text in slices on the
counter's worker thread."""
HF_SLICE_CHARS = 16_384
"""Characters per slice given to the worker thread (about 10 ms of tokenizing)."""
_SPLIT_PROBE = (
    "The quick brown fox, it's said, jumps over  the lazy dog.\n\nIt is 12345 o'clock:"
    " naïve café -- 日本語 テキスト 🙂 x=[1, 2]; done!\tend  ok"
)


def _space_cuts(text: str, start: int = 0) -> Iterator[int]:
    """Positions of a space that follows a non-space, from ``start``: every byte-level BPE
    pre-tokenizer in use (GPT-2, Llama 3, cl100k-style regexes) and whitespace splitting
    start a pre-token there, so the counts of the two sides add up."""
    i = text.find(" ", max(start, 1))
    while i != -1:
        if not text[i - 1].isspace():
            yield i
        i = text.find(" ", i + 1)


class HFTokenizerCounter:
    """Exact counts from a Hugging Face ``tokenizer.json``.

    ``count_within`` tokenizes text above :data:`HF_INLINE_CHARS` off the loop, one slice at a
    time, on one worker thread (``encode_batch`` releases the GIL; ``encode`` does not),
    and stops once the budget is passed. Slices are cut before a space that follows a
    non-space, where the counts of the parts add up; that is checked once at load on a probe
    text, and a tokenizer that fails it (one that prepends a word marker to each text, such as
    SentencePiece's Metaspace) gets the whole text in one call, still off the loop. A stretch
    without such a space is one slice, however long.
    """

    def __init__(self, path: str | Path, *, slice_chars: int = HF_SLICE_CHARS) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "counting with a tokenizer.json needs the 'tokenizers' package:"
                " pip install 'lpu-router[tokenizers]'"
            ) from exc
        self._tok = Tokenizer.from_file(str(path))
        self.name = f"tokenizer:{Path(path).name}"
        self.slice_chars = slice_chars
        self.splits_at_spaces = all(
            self.count(_SPLIT_PROBE[:i]) + self.count(_SPLIT_PROBE[i:]) == self.count(_SPLIT_PROBE)
            for i in _space_cuts(_SPLIT_PROBE))
        # One worker: counting never takes more than one core from the loop's process.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        # Both release the GIL; the fast one (tokenizers >= 0.21) skips the offsets.
        self._encode_batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def _count_off_loop(self, text: str) -> int:
        return len(self._encode_batch([text], add_special_tokens=False)[0].ids)

    def slices(self, text: str) -> Iterator[str]:
        """``text`` in parts whose counts add up to its count (see the class docstring)."""
        if not self.splits_at_spaces:
            yield text
            return
        pos = 0
        while len(text) - pos > self.slice_chars:
            cut = next(_space_cuts(text, pos + self.slice_chars), -1)
            if cut == -1:
                break
            yield text[pos:cut]
            pos = cut
        yield text[pos:]

    async def count_within(self, text: str, budget: int, pace: Pace) -> int:
        if len(text) <= HF_INLINE_CHARS:
            await pace.spent(len(text))
            return self.count(text)
        loop = asyncio.get_running_loop()
        total = 0
        for part in self.slices(text):
            # A cancelled handler leaves at this await: the running slice ends, no more start.
            total += await loop.run_in_executor(self._worker, self._count_off_loop, part)
            if total > budget:
                break
        return total


def _template(req: CompletionRequest) -> tuple[int, list[str]]:
    """The prompt's fixed tokens (template, token ids) and the texts to count."""
    if req.kind == "completion":
        return req.prompt_token_ids + TEMPLATE_BOS, [req.prompt]
    fixed = TEMPLATE_BOS + TEMPLATE_REPLY_PRIMER + TEMPLATE_PER_MESSAGE * len(req.messages)
    texts = [m.text for m in req.messages]
    texts.insert(0, req.extra_text)  # (a list display with a generator costs twice as much)
    return fixed, texts


def prompt_tokens(req: CompletionRequest, counter: TokenCounter) -> int:
    """Tokens the backend will see as the prompt of ``req``, template included (unbounded
    work: the emulator's count; the router uses :func:`count_prompt`)."""
    fixed, texts = _template(req)
    return fixed + sum(counter.count(t) for t in texts)


def prompt_bound(req: CompletionRequest) -> int:
    """An upper bound of ``prompt_tokens(req)`` under either counter (module docstring), in
    O(messages): no text is scanned (``str.isascii`` reads a flag)."""
    fixed, texts = _template(req)
    for text in texts:
        if text:
            fixed += (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
                      ) + 1
    return fixed


@dataclass(frozen=True, slots=True)
class PromptCount:
    tokens: int
    """``prompt_tokens(req)`` when ``exact``; else a lower bound of it above the limit."""
    exact: bool


async def count_prompt(req: CompletionRequest, counter: TokenCounter, limit: int,
                       pace: Pace | None = None) -> PromptCount:
    """The prompt's count, exact up to ``limit`` tokens; past it, counting stops and the result
    is "at least" (``exact`` False). Large prompts give the loop a turn every slice."""
    pace = pace or Pace()
    total, texts = _template(req)
    for text in texts:
        if total > limit:
            break
        if text:
            total += await counter.count_within(text, limit - total, pace)
    return PromptCount(total, total <= limit)
