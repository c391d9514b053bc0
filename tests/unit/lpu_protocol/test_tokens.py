"""Token counting: the estimator's calibrated margin, the tokenizer.json path, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from token_corpus import COUNTS_FILE, SAMPLES

from lpu_protocol.openai_api import parse_request
from lpu_protocol.tokens import (
    ESTIMATE_UNDERCOUNT_MARGIN,
    TEMPLATE_BOS,
    TEMPLATE_PER_MESSAGE,
    TEMPLATE_REPLY_PRIMER,
    EstimateCounter,
    HFTokenizerCounter,
    prompt_tokens,
)

TRUE_COUNTS: dict[str, int] = json.loads(COUNTS_FILE.read_text("utf-8"))
EST = EstimateCounter()


@pytest.mark.parametrize("name", sorted(SAMPLES), ids=sorted(SAMPLES))
def test_estimate_never_undercounts_beyond_the_margin(name: str) -> None:
    true = TRUE_COUNTS[name]
    assert EST.count(SAMPLES[name]) >= true * (1 - ESTIMATE_UNDERCOUNT_MARGIN)


def test_estimate_margin_holds_on_the_whole_corpus_joined() -> None:
    text = "\n\n".join(SAMPLES.values())
    assert EST.count(text) >= sum(TRUE_COUNTS.values()) * (1 - ESTIMATE_UNDERCOUNT_MARGIN)


def test_margin_is_the_measured_figure_rounded_up() -> None:
    worst = max((TRUE_COUNTS[k] - EST.count(v)) / TRUE_COUNTS[k] for k, v in SAMPLES.items())
    assert 0 < worst <= ESTIMATE_UNDERCOUNT_MARGIN < worst + 0.01


@pytest.mark.parametrize(
    ("text", "count"),
    [("", 0), ("hello", 1), (" world", 1), ("12345", 2), (" 7", 2), ("   ", 1)],
    ids=["empty", "word", "spaced-word", "digit-groups", "spaced-digit", "spaces"],
)
def test_estimate_pieces(text: str, count: int) -> None:
    assert EST.count(text) == count


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) tokenizer.json: word-level over whitespace, trained with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "hello world"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_counts_exactly(tokenizer_json: Path) -> None:
    counter = HFTokenizerCounter(tokenizer_json)
    assert counter.name == "tokenizer:tokenizer.json"
    assert counter.count("the cat sat on the mat") == 6
    assert counter.count("hello, world!") == 4  # "," and "!" are their own (unknown) words
    assert counter.count("") == 0


def test_chat_template_counts_content_parts(tokenizer_json: Path) -> None:
    counter = HFTokenizerCounter(tokenizer_json)
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "the cat"},
                                         {"type": "text", "text": "sat on the mat"}]},
        ],
    }
    req = parse_request(json.dumps(body).encode(), "chat")
    expected = TEMPLATE_BOS + TEMPLATE_REPLY_PRIMER + 2 * TEMPLATE_PER_MESSAGE + 2 + 6
    assert prompt_tokens(req, counter) == expected


def test_completion_prompt_counts_bos_and_token_ids() -> None:
    req = parse_request(json.dumps({"model": "m", "prompt": [1, 2, 3]}).encode(), "completion")
    assert prompt_tokens(req, EST) == 3 + TEMPLATE_BOS
