"""The prompt's upper bound: never below the estimator's count nor the exact Llama 3 count."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from token_corpus import COUNTS_FILE, SAMPLES

from lpu_protocol.openai_api import parse_request
from lpu_protocol.tokens import EstimateCounter, prompt_bound, prompt_tokens

COUNTER = EstimateCounter()


def _chat(*texts: str) -> bytes:
    return json.dumps({"model": "m", "messages": [
        {"role": "user", "content": t} for t in texts]}).encode()


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=200), min_size=1, max_size=4))
def test_the_bound_is_at_least_the_estimate(texts: list[str]) -> None:
    texts = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]  # no lone surrogates
    req = parse_request(_chat(*texts), "chat", params=None)
    assert prompt_bound(req) >= prompt_tokens(req, COUNTER)


def test_the_bound_is_at_least_the_exact_count_of_every_corpus_sample() -> None:
    exact = json.loads(COUNTS_FILE.read_text())
    for name, text in SAMPLES.items():
        req = parse_request(json.dumps({"model": "m", "prompt": text}).encode(), "completion",
                            params=None)
        # prompt_bound counts the template's fixed tokens too; the recorded count is the text's.
        assert prompt_bound(req) - 1 >= exact[name], name


def test_the_bound_grows_with_the_bytes_not_the_characters() -> None:
    ascii_req = parse_request(_chat("a" * 100), "chat", params=None)
    cjk_req = parse_request(_chat("字" * 100), "chat", params=None)
    assert prompt_bound(cjk_req) - prompt_bound(ascii_req) == 200  # 3 bytes against 1 each
