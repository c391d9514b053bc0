"""Bucketing: the smallest compiled shape that fits a request, and its output allowance.

A bucket *fits* a request when ``need(prompt) + allowance <= max_seq_len`` where ``need`` is the
counted prompt, grown by ``ESTIMATE_UNDERCOUNT_MARGIN`` (rounded up) when the
count is an estimate, so an estimate that reads low still fits the compiled shape.

The allowance is the client's ``max_tokens`` / ``max_completion_tokens``, or the bucket's
``default_max_tokens`` when it gives none. Placement tries, in order, buckets of the requested
model from the smallest shape up:

1. the first bucket that fits the allowance as asked (and the allowance is within its cap);
2. with ``over_cap = "clamp"``, the first bucket that fits once the allowance is lowered to its
   cap (the response then carries ``x-lpu-max-tokens-clamped-from``);
3. without a client allowance, the first bucket with room for at least one output token; the
   allowance is what is left of its shape.

Nothing fits: 400 ``invalid_value`` on ``max_tokens`` when a bucket that refuses over-cap
allowances would fit the prompt at its cap, else 400 ``context_length_exceeded`` (whose
message reports the prompt as ``need``, margin included; "at least" ``need`` when counting
stopped past the largest shape, see :meth:`BucketTable.count_limit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lpu_protocol.openai_api import APIError, context_length_error, model_not_found
from router.bucket_config import BucketConfig, OverCap
from router.errors import Rejection
from router.outcomes import RejectReason

__all__ = ["BucketTable", "Placement"]


@dataclass(frozen=True, slots=True)
class Placement:
    bucket: BucketConfig
    max_tokens: int
    """Allowance to forward and to reserve for."""
    clamped_from: int | None = None
    """The client's allowance when it was lowered to the bucket's cap."""


class BucketTable:
    """Buckets by public model name, each list ordered smallest shape first."""

    def __init__(self, buckets: Sequence[BucketConfig], *, margin: float) -> None:
        self.margin = margin
        by_model: dict[str, list[BucketConfig]] = {}
        for b in buckets:
            by_model.setdefault(b.model, []).append(b)
        self._by_model = {
            m: tuple(sorted(bs, key=lambda b: (b.max_seq_len, b.max_output_tokens)))
            for m, bs in by_model.items()
        }

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._by_model)

    def count_limit(self, model: str) -> int:
        """Tokens past which a prompt fits no bucket of ``model`` (0 for an unknown model): the
        count must be exact up to here, and counting may stop beyond it."""
        buckets = self._by_model.get(model)
        return buckets[-1].max_seq_len if buckets else 0

    def need(self, prompt_tokens: int) -> int:
        """Tokens of shape the prompt may take, margin included."""
        return math.ceil(prompt_tokens * (1.0 + self.margin)) if self.margin else prompt_tokens

    def settled(self, model: str, bound: int, requested: int | None) -> Placement | None:
        """The placement of every prompt of at most ``bound`` tokens, when ``bound`` already
        fits the model's smallest shape with the allowance as asked (then the exact count
        cannot change it: a smaller prompt fits the same first bucket, with the same
        allowance); None when only the count can tell (or the model is unknown)."""
        buckets = self._by_model.get(model)
        if buckets is None:
            return None
        b = buckets[0]
        want = requested if requested is not None else b.default_max_tokens
        if want <= b.max_output_tokens and self.need(bound) + want <= b.max_seq_len:
            return Placement(b, want)
        return None

    def place(self, model: str, prompt_tokens: int, requested: int | None,
              param: str | None = None, *, at_least: bool = False) -> Placement:
        """Choose the bucket and allowance, or raise :class:`Rejection`. ``at_least``: the
        count stopped past :meth:`count_limit` (``prompt_tokens`` is a lower bound)."""
        buckets = self._by_model.get(model)
        if buckets is None:
            raise Rejection(RejectReason.UNKNOWN_MODEL, model_not_found(model))
        need = self.need(prompt_tokens)
        for b in buckets:
            want = requested if requested is not None else b.default_max_tokens
            if want <= b.max_output_tokens and need + want <= b.max_seq_len:
                return Placement(b, want)
        if requested is not None:
            for b in buckets:
                if b.over_cap is OverCap.CLAMP and need + b.max_output_tokens <= b.max_seq_len:
                    return Placement(b, min(requested, b.max_output_tokens), requested)
        else:
            for b in buckets:
                if need < b.max_seq_len:
                    return Placement(b, min(b.max_seq_len - need, b.max_output_tokens))
        largest = buckets[-1]
        if requested is not None:
            # Only a refused cap stands in the way when the prompt would fit at the cap.
            capped = [b for b in buckets if b.over_cap is OverCap.REFUSE
                      and requested > b.max_output_tokens
                      and need + b.max_output_tokens <= b.max_seq_len]
            if capped:
                cap = max(b.max_output_tokens for b in capped)
                name = param or "max_tokens"
                raise Rejection(
                    RejectReason.MAX_TOKENS_CAP,
                    APIError(
                        400,
                        f"{name} is too large: {requested}. This model supports at most"
                        f" {cap} completion tokens, whereas you provided {requested}.",
                        param=name,
                        code="invalid_value",
                    ),
                )
        error = context_length_error(largest.max_seq_len, need, requested or 0) if not at_least \
            else APIError(
                400,
                f"This model's maximum context length is {largest.max_seq_len} tokens. However,"
                f" your messages resulted in at least {need} tokens (counting stopped there)."
                " Please reduce the length of the messages.",
                param="messages", code="context_length_exceeded")
        raise Rejection(RejectReason.CONTEXT_LENGTH, error)
