"""Bounded, paced counting: the same counts as the one-call count, early stop, cancellation.

``count_within`` and ``count_prompt`` are what the router runs on its event loop. The contract:
a text counted to the end gives exactly ``count(text)`` (slicing never changes the number);
counting stops once the budget is passed (the result is then a lower bound above it); the loop
gets a turn every slice, and a cancelled count does no further slice. Work is observed as the
number of turns :class:`Pace` gave, never as a time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from token_corpus import SAMPLES

from lpu_protocol.openai_api import CompletionRequest, parse_request
from lpu_protocol.tokens import (
    SLICE_CHARS,
    EstimateCounter,
    HFTokenizerCounter,
    Pace,
    count_prompt,
    prompt_tokens,
)
from router.buckets import BucketTable
from router.config import parse_config
from router.errors import Rejection

T = TypeVar("T")
EST = EstimateCounter()
ANY = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
# Text made of few classes in long runs: the window edges fall inside runs and digit groups.
RUNS = st.lists(st.sampled_from(["a", "B", "é", "日", "1", "٣", " ", "\n", ".", "_", "🙂", "\t"]),
                max_size=40).flatmap(lambda parts: st.tuples(*(
                    st.integers(1, 12).map(lambda n, p=p: p * n) for p in parts))).map("".join)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop, the production loop (hypothesis tests are synchronous)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def table(margin: float) -> BucketTable:
    """One bucket of model ``m`` (the 2k artifact: ``max_seq_len`` 2048)."""
    config = parse_config({"buckets": [{"name": "b", "model": "m", "artifact": "llama-3.1-8b-2k",
                                        "backends": ["http://127.0.0.1:1"]}]})
    return BucketTable(config.buckets, margin=margin)


def chat(*texts: str) -> CompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}
    return parse_request(json.dumps(body).encode(), "chat")


# -- the same numbers ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(text=st.one_of(ANY, RUNS), window=st.integers(1, 40))
def test_sliced_estimate_equals_the_one_call_count(text: str, window: int) -> None:
    counter = EstimateCounter(slice_chars=window)
    assert run(counter.count_within(text, 10**9, Pace(window))) == EST.count(text)


@pytest.mark.parametrize("name", sorted(SAMPLES), ids=sorted(SAMPLES))
@pytest.mark.parametrize("window", [1, 7, 64], ids=["w1", "w7", "w64"])
def test_sliced_estimate_equals_the_count_on_the_corpus(name: str, window: int) -> None:
    counter = EstimateCounter(slice_chars=window)
    text = SAMPLES[name]
    assert run(counter.count_within(text, 10**9, Pace(window))) == EST.count(text)


@pytest.mark.parametrize("text", ["a" * 100_000, "é" * 50_000, " " * 100_000, "aB" * 50_000,
                                  "!?" * 50_000, "1" * 100_000],
                         ids=["ascii-word", "accented-word", "spaces", "mixed-case", "symbols",
                              "digits"])
def test_a_piece_longer_than_a_window_counts_as_one_piece(text: str) -> None:
    counter = EstimateCounter(slice_chars=1000)
    assert run(counter.count_within(text, 10**9, Pace(1000))) == EST.count(text)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.one_of(ANY, RUNS), min_size=1, max_size=5))
def test_count_prompt_within_the_limit_is_prompt_tokens(texts: list[str]) -> None:
    req = chat(*texts)
    counted = run(count_prompt(req, EstimateCounter(slice_chars=16), 10**9, Pace(16)))
    assert counted.exact and counted.tokens == prompt_tokens(req, EST)


# -- stopping early --------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [0, 1, 100, 8192], ids=["0", "1", "100", "8192"])
@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.one_of(ANY, RUNS), min_size=1, max_size=4))
def test_past_the_limit_the_count_is_a_lower_bound_above_it(limit: int,
                                                             texts: list[str]) -> None:
    req = chat(*texts)
    counted = run(count_prompt(req, EstimateCounter(slice_chars=8), limit, Pace(8)))
    full = prompt_tokens(req, EST)
    assert counted.exact is (full <= limit)
    assert counted.tokens == full if counted.exact else limit < counted.tokens <= full


@pytest.mark.parametrize(
    "text",
    ["word " * 800_000, "a" * 4_000_000, "é" * 2_000_000, " " * 4_000_000, "aB" * 2_000_000,
     "Tell me something. " * 200_000],
    ids=["prose", "one-ascii-word", "one-accented-word", "spaces", "mixed-case", "sentences"])
def test_a_4mb_prompt_past_the_limit_costs_a_few_slices(text: str) -> None:
    pace = Pace()
    counted = run(count_prompt(chat(text), EST, 8192, pace))
    assert not counted.exact and counted.tokens > 8192
    # 4 MB is 244 slices; stopping past 8192 tokens reads at most ~64 KB of it.
    assert pace.turns <= 4


def test_many_small_messages_are_paced_like_one_large_one() -> None:
    pace = Pace()
    req = chat(*(["hello " * 100] * 2000))  # 1.2 MB in 600-character messages
    counted = run(count_prompt(req, EST, 10**9, pace))
    assert counted.exact and counted.tokens == prompt_tokens(req, EST)
    chars = sum(len(m.text) for m in req.messages)
    # A turn once a slice's worth has gathered: every 28 messages (16 800 characters).
    assert pace.turns == chars // (-(-SLICE_CHARS // 600) * 600)


def test_an_unknown_model_is_not_counted() -> None:
    limit = table(0.0).count_limit("other")
    assert limit == 0
    pace = Pace()
    counted = run(count_prompt(chat("word " * 800_000), EST, limit, pace))
    assert not counted.exact and pace.turns == 0


def test_a_prompt_counted_past_the_limit_is_refused_as_at_least() -> None:
    buckets = table(0.03)
    limit = buckets.count_limit("m")
    assert limit == 2048
    counted = run(count_prompt(chat("word " * 800_000), EST, limit))
    with pytest.raises(Rejection) as info:
        buckets.place("m", counted.tokens, 16, at_least=not counted.exact)
    err = info.value.error
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")
    assert f"at least {buckets.need(counted.tokens)} tokens" in err.message
    assert f"maximum context length is {limit} tokens" in err.message


# -- cancellation ------------------------------------------------------------------------------

def test_a_cancelled_count_does_no_further_slice() -> None:
    async def scenario() -> tuple[int, int]:
        pace = Pace()
        task = asyncio.create_task(count_prompt(chat("word " * 800_000), EST, 10**9, pace))
        for _ in range(3):
            await asyncio.sleep(0)  # the count runs one slice per turn of the loop
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = pace.turns
        for _ in range(10):
            await asyncio.sleep(0)
        return at_cancel, pace.turns

    at_cancel, later = run(scenario())
    assert 1 <= at_cancel <= 3 and later == at_cancel  # of 244 slices


# -- the exact tokenizer -----------------------------------------------------------------------

def _tokenizer(path: Path, kind: str) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = ["the cat sat on the mat, hello world! naïve café 日本語 12345 it's"] * 20
    if kind == "word-level":
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    elif kind == "byte-level-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    else:  # a word marker prepended to the whole text: slices would not add up
        tok = Tokenizer(models.BPE(unk_token="[UNK]", byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300,
                                                            special_tokens=["[UNK]"]))
    out = path / f"{kind}.json"
    tok.save(str(out))
    return out


KINDS = ["word-level", "byte-level-bpe", "prepended-marker"]


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tokenizers")
    return {kind: _tokenizer(base, kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_tokenizer_slicing_is_checked_at_load(kind: str, tokenizers_dir: dict[str, Path]) -> None:
    counter = HFTokenizerCounter(tokenizers_dir[kind])
    assert counter.splits_at_spaces is (kind != "prepended-marker")


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.sampled_from(["the", "cat,", "mat!", "naïve", "日本語", "12345", "it's",
                                       " ", "\n", "x  y", "\t"]), max_size=3000))
def test_tokenizer_counted_in_slices_equals_one_call(kind: str, tokenizers_dir: dict[str, Path],
                                                     words: list[str]) -> None:
    counter = HFTokenizerCounter(tokenizers_dir[kind], slice_chars=64)
    text = " ".join(words)
    assert run(counter.count_within(text, 10**9, Pace())) == counter.count(text)


def test_tokenizer_stops_past_the_budget(tokenizers_dir: dict[str, Path]) -> None:
    counter = HFTokenizerCounter(tokenizers_dir["byte-level-bpe"], slice_chars=1000)
    text = "the cat sat on the mat " * 20_000
    n = run(counter.count_within(text, 100, Pace()))
    assert 100 < n < counter.count(text)
    assert n <= counter.count(text[:2000])  # one slice of 1000 characters, cut at a space
