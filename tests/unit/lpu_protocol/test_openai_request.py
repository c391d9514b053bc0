from __future__ import annotations

import json
from typing import Any

import pytest

from lpu_protocol.openai_api import (
    ECHO_CHARS,
    APIError,
    check_params,
    context_length_error,
    forward_body,
    model_not_found,
    parse_request,
)
from lpu_protocol.param_policy import ExtraParams, ParamPolicy
from lpu_protocol.tokens import EstimateCounter, prompt_tokens


def chat(**kw: Any) -> bytes:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(kw)
    return json.dumps(body).encode()


def test_valid_chat_request() -> None:
    req = parse_request(
        chat(max_completion_tokens=7, stream=True, stream_options={"include_usage": True},
             service_tier="flex", seed=3), "chat"
    )
    assert req.kind == "chat"
    assert req.max_tokens == 7 and req.max_tokens_param == "max_completion_tokens"
    assert req.stream and req.include_usage
    assert req.service_tier == "flex" and req.seed == 3
    assert req.messages[0].role == "user" and req.messages[0].text == "hi"


def test_content_parts_and_tool_calls_are_text() -> None:
    body = chat(messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
    ])
    req = parse_request(body, "chat")
    assert req.messages[0].text == "a\nb"
    assert '"name":"f"' in req.messages[1].text


def test_completion_prompt_forms() -> None:
    r = parse_request(b'{"model": "m", "prompt": "hello", "max_tokens": 3}', "completion")
    assert r.prompt == "hello" and r.max_tokens == 3
    r = parse_request(b'{"model": "m", "prompt": [1, 2, 3]}', "completion")
    assert r.prompt_token_ids == 3


CASES = [
    (b"{not json", "invalid_json", None),
    (b"\xff\xfe", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "missing_required_parameter", "model"),
    (b'{"model": 3, "messages": []}', "invalid_type", "model"),
    (b'{"model": "m"}', "missing_required_parameter", "messages"),
    (b'{"model": "m", "messages": []}', "invalid_value", "messages"),
    (b'{"model": "m", "messages": "hi"}', "invalid_type", "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "invalid_value",
     "messages[0].role"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', "missing_required_parameter",
     "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user"}]}', "missing_required_parameter",
     "messages[0].content"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     "invalid_value", "messages[0].content[0].type"),
    (chat(max_tokens=-1), "invalid_value", "max_tokens"),
    (chat(max_tokens=0), "invalid_value", "max_tokens"),
    (chat(max_tokens=10**12), "invalid_value", "max_tokens"),
    (chat(max_tokens="5"), "invalid_type", "max_tokens"),
    (chat(max_tokens=True), "invalid_type", "max_tokens"),
    (chat(n=2), "unsupported_parameter", "n"),
    (chat(temperature=5), "invalid_value", "temperature"),
    (chat(stream="yes"), "invalid_type", "stream"),
    (chat(stream_options={"include_usage": True}), "invalid_value", "stream_options"),
    (chat(frobnicate=1), "unknown_parameter", "frobnicate"),
]


@pytest.mark.parametrize(
    ("raw", "code", "param"), CASES, ids=[f"case{i}" for i in range(len(CASES))]
)
def test_bad_requests_are_400_in_openai_shape(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    err = info.value
    assert err.status == 400
    assert err.code == code
    assert err.param == param
    body = json.loads(err.to_json())
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_context_length_message() -> None:
    err = context_length_error(2048, 2000, 100)
    assert err.status == 400 and err.code == "context_length_exceeded"
    assert "2048" in err.message and "2100" in err.message


def test_prompt_tokens_include_template() -> None:
    counter = EstimateCounter()
    one = parse_request(chat(), "chat")
    two = parse_request(
        chat(messages=[{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}]),
        "chat",
    )
    assert prompt_tokens(two, counter) - prompt_tokens(one, counter) == 4 + counter.count("hi")
    assert prompt_tokens(one, counter) == 1 + 4 + 4 + counter.count("hi")


# -- one validation for router and emulator: text, nesting, JSON proper ------------------------

HOSTILE = [
    (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}', "invalid_value",
     "messages[0].content"),
    (b'{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\\udfffb"}]}]}',
     "invalid_value", "messages[0].content[0].text"),
    (b'{"model":"m\\ud83d","messages":[{"role":"user","content":"x"}]}', "invalid_value", "model"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"tools":' + b"[" * 980 + b"]" * 980
     + b"}", "invalid_json", "tools"),
    (b'{"model":"m","messages":[{"role":"user","content":"x","tool_calls":' + b"[" * 70
     + b"]" * 70 + b"}]}", "invalid_json", "messages"),
    (b'{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}', "invalid_json",
     None),
    ('{"model":"m","messages":[{"role":"user","content":"x"}]}'.encode("utf-16-le"),
     "invalid_json", None),
]


@pytest.mark.parametrize(("raw", "code", "param"), HOSTILE,
                         ids=["lone-high", "lone-low-in-part", "model-surrogate", "deep-980",
                              "deep-70", "nan", "utf16"])
def test_hostile_bodies_are_400_saying_where(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    assert (info.value.status, info.value.code, info.value.param) == (400, code, param)
    json.loads(info.value.to_json())


def test_astral_characters_and_escaped_pairs_are_text() -> None:
    req = parse_request(b'{"model":"m","messages":[{"role":"user","content":"\\ud83d\\ude00 '
                        b'\\u00e9 \xf0\x9f\x98\x80"}]}', "chat")
    assert req.messages[0].text == "\U0001F600 \u00e9 \U0001F600"


# -- what is echoed is short -------------------------------------------------------------------

HUGE = "x" * 1_000_000
ECHOES = [
    (chat(**{HUGE: 1}), "unknown_parameter"),
    (chat(messages=[{"role": HUGE, "content": "x"}]), "invalid_value"),
    (chat(messages=[{"role": "user", "content": [{"type": HUGE}]}]), "invalid_value"),
]


@pytest.mark.parametrize(("raw", "code"), ECHOES, ids=["param-name", "role", "part-type"])
def test_echoed_values_are_cut(raw: bytes, code: str) -> None:
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat")
    assert info.value.code == code
    assert len(info.value.to_json()) < 1024


def test_model_not_found_is_cut() -> None:
    err = model_not_found(HUGE)
    assert err.status == 404 and len(err.to_json()) < 1024
    assert "x" * ECHO_CHARS in err.message and "1000000 characters" in err.message


# -- the parameter policy ----------------------------------------------------------------------

GUIDELLM = {"stop": None, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
VLLM_BENCH = {"ignore_eos": True, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.0,
              "min_tokens": 4, "best_of": 1, "temperature": 0.0}


@pytest.mark.parametrize("extra", [GUIDELLM, VLLM_BENCH], ids=["guidellm", "vllm-bench"])
def test_default_policy_accepts_load_tools(extra: dict[str, Any]) -> None:
    req = parse_request(chat(max_tokens=16, stream=True, **extra), "chat")
    assert req.ignore_eos
    assert req.min_tokens == extra.get("min_tokens", 0)
    completion = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 16, "stream": True,
                             **extra}).encode()
    assert parse_request(completion, "completion").ignore_eos


POLICIES = [
    (ParamPolicy(ExtraParams.REFUSE), {"top_k": 5}, "top_k"),
    (ParamPolicy(ExtraParams.REFUSE), {"ignore_eos": True}, "ignore_eos"),
    (ParamPolicy(), {"frobnicate": 1}, "frobnicate"),
    (ParamPolicy(ExtraParams.ALLOW, frozenset({"top_k"})), {"top_k": 1, "min_p": 0.1}, "min_p"),
    (ParamPolicy(ExtraParams.ALLOW, frozenset({"x"})), {"x": [1]}, None),
    (ParamPolicy(ExtraParams.PASS), {"frobnicate": 1, "chat_template_kwargs": {}}, None),
    (ParamPolicy(ExtraParams.REFUSE), {"temperature": 0.5, "tools": []}, None),
]


@pytest.mark.parametrize(("policy", "extra", "refused"), POLICIES,
                         ids=[f"policy{i}" for i in range(len(POLICIES))])
def test_policy_refuses_exactly_what_it_says(policy: ParamPolicy, extra: dict[str, Any],
                                             refused: str | None) -> None:
    raw = chat(**extra)
    late = parse_request(raw, "chat", params=None)  # the router: decided after placement
    assert set(late.extra_params) == set(extra) - {"temperature", "tools"}
    for check in (lambda: parse_request(raw, "chat", params=policy),
                  lambda: check_params(late, policy)):
        if refused is None:
            check()
            continue
        with pytest.raises(APIError) as info:
            check()
        assert (info.value.code, info.value.param) == ("unknown_parameter", refused)


VLLM_BAD = [
    (chat(ignore_eos="yes"), "invalid_type", "ignore_eos"),
    (chat(min_tokens=-1), "invalid_value", "min_tokens"),
    (chat(max_tokens=8, min_tokens=9), "invalid_value", "min_tokens"),
    (chat(min_tokens=1.5), "invalid_type", "min_tokens"),
    (chat(top_k="5"), "invalid_type", "top_k"),
    (chat(min_p=2), "invalid_value", "min_p"),
    (chat(repetition_penalty=-1), "invalid_value", "repetition_penalty"),
    (chat(repetition_penalty=0), "invalid_value", "repetition_penalty"),
]


@pytest.mark.parametrize(("raw", "code", "param"), VLLM_BAD,
                         ids=[f"vllm-bad{i}" for i in range(len(VLLM_BAD))])
def test_vllm_parameters_are_checked(raw: bytes, code: str, param: str) -> None:
    with pytest.raises(APIError) as info:
        parse_request(raw, "chat", params=None)
    assert (info.value.code, info.value.param) == (code, param)


# -- the forwarded body ------------------------------------------------------------------------

def _forward(raw: bytes, max_tokens: int, model: str | None = None) -> dict[str, Any]:
    out = forward_body(parse_request(raw, "chat"), max_tokens, model)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len(pairs) == len(dict(pairs)), f"duplicate keys in {out!r}"
        return dict(pairs)

    doc: dict[str, Any] = json.loads(out, object_pairs_hook=unique)
    return doc


def test_forward_body_is_the_client_bytes_when_nothing_changes() -> None:
    raw = b'{"model": "m",\n "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    assert forward_body(parse_request(raw, "chat"), 5) is raw
    assert forward_body(parse_request(raw, "chat"), 5, "m") is raw


def test_forward_body_splices_allowance_and_model() -> None:
    absent = chat()
    assert _forward(absent, 100) == {**json.loads(absent), "max_tokens": 100}
    both = chat(max_tokens=900, max_completion_tokens=800)
    assert _forward(both, 512) == {**json.loads(both), "max_tokens": 512,
                                   "max_completion_tokens": 512}
    renamed = _forward(chat(max_tokens=5), 5, "meta-llama/Llama-3.1-8B-Instruct")
    assert renamed["model"] == "meta-llama/Llama-3.1-8B-Instruct" and renamed["max_tokens"] == 5


def test_forward_body_of_a_deep_body_never_recurses() -> None:
    raw = (b'{"model":"m","messages":[{"role":"user","content":"x"}],"metadata":'
           + b'{"a":' * 60 + b"1" + b"}" * 60 + b"}")
    out = _forward(raw, 7, "up")
    assert out["max_tokens"] == 7 and out["model"] == "up"


def test_forward_body_rewrites_duplicated_members_to_what_the_router_decided() -> None:
    raw = (b'{"model":"other","max_tokens":100000,"messages":[{"role":"user","content":"x"}],'
           b'"model":"m","max_tokens":5}')
    out = forward_body(parse_request(raw, "chat"), 5)
    pairs = json.loads(out, object_pairs_hook=lambda p: p)
    assert [(k, v) for k, v in pairs if k in ("model", "max_tokens")] == [
        ("model", "m"), ("max_tokens", 5), ("model", "m"), ("max_tokens", 5)]
