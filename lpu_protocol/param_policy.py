"""Which request parameters beyond OpenAI's a deployment accepts.

OpenAI refuses a parameter it does not define for the endpoint (400 ``unknown_parameter``);
load tools and vLLM-style clients send vLLM's sampling extensions (guidellm: ``ignore_eos``;
vLLM's ``benchmark_serving``: ``ignore_eos``, ``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``best_of``). A :class:`ParamPolicy` says what to do with them: refuse, pass
through, or pass through an allow-list (``@vllm`` names the vLLM preset). The router applies
its bucket's policy once placement is known; the emulator its own (``strict_params``).

Example: ``ParamPolicy(ExtraParams.ALLOW, VLLM_SAMPLING_PARAMS | {"chat_template_kwargs"})``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DEFAULT_PARAMS", "PARAM_PRESETS", "VLLM_SAMPLING_PARAMS", "ExtraParams",
           "ParamPolicy"]

VLLM_SAMPLING_PARAMS = frozenset(
    {
        "best_of", "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
        "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
        "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
        "prompt_logprobs", "allowed_token_ids", "bad_words",
    }
)
"""vLLM's extra sampling parameters of ``/v1/chat/completions`` and ``/v1/completions``
(vllm/entrypoints/openai/protocol.py, "sampling params"): what guidellm (``ignore_eos``) and
vLLM's ``benchmark_serving`` (``ignore_eos``, ``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``best_of``) send besides OpenAI's own."""

PARAM_PRESETS: Mapping[str, frozenset[str]] = {"@vllm": VLLM_SAMPLING_PARAMS}
"""Names that stand for a set of parameters in an allow-list."""


class ExtraParams(StrEnum):
    """What to do with a request parameter OpenAI does not define for the endpoint."""

    REFUSE = "refuse"
    """400 ``unknown_parameter``, as OpenAI does."""
    PASS = "pass"
    """Forward it unchecked: the backend decides."""
    ALLOW = "allow"
    """Forward it when it is on the allow-list, else refuse it."""


@dataclass(frozen=True, slots=True)
class ParamPolicy:
    """Which parameters beyond OpenAI's a deployment accepts (and forwards as sent)."""

    mode: ExtraParams = ExtraParams.ALLOW
    allow: frozenset[str] = VLLM_SAMPLING_PARAMS
    """The allow-list of ``allow`` (ignored by the other modes)."""

    def refused(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` (parameters OpenAI does not define) this policy refuses."""
        if self.mode is ExtraParams.PASS:
            return None
        for name in names:
            if self.mode is ExtraParams.REFUSE or name not in self.allow:
                return name
        return None


DEFAULT_PARAMS = ParamPolicy()
"""The default policy: OpenAI's parameters and vLLM's sampling extensions."""
