"""One emulated backend: the served artifact, its live schedule, and the admission of requests.

:meth:`Backend.admit` is the request's way in, one step after another: ready?
-> parse -> model -> count -> allowance -> deadline -> queue bound -> injected
error -> output length -> place on the schedule. Every refusal is a
:class:`Refused` carrying the OpenAI error, the metric reason and any response
headers; nothing here writes HTTP.

Artifact swap (:meth:`Backend.swap`): from the call on the backend is not ready
and refuses new work (503 ``compiling``) for the artifact's compile time
(scaled); work already admitted finishes on the old schedule; once both are
over, the new artifact serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

import numpy as np

from lpu_emulator.engine import Job
from lpu_emulator.faults import FaultKind, FaultPlan, FaultSettings, plan_faults
from lpu_emulator.lengths import draw_length
from lpu_emulator.metrics import EmulatorMetrics, ModelSeries
from lpu_emulator.options import EmulatorOptions
from lpu_emulator.schedule import LiveSchedule
from lpu_emulator.text import request_key, token_ids
from lpu_emulator.tools import ToolCall, tool_call_for
from lpu_protocol.artifact import Artifact
from lpu_protocol.headers import X_LPU_DEADLINE_MS, X_LPU_PREDICTED_TTFT_MS, X_LPU_SCHEDULE
from lpu_protocol.load_report import LoadReport, ScheduleReport
from lpu_protocol.openai_api import APIError, CompletionRequest, context_length_error, parse_request
from lpu_protocol.openai_api import model_not_found as _model_not_found
from lpu_protocol.param_policy import VLLM_SAMPLING_PARAMS, ExtraParams, ParamPolicy
from lpu_protocol.tokens import EstimateCounter, HFTokenizerCounter, TokenCounter, prompt_tokens

__all__ = ["Admission", "Backend", "Refused", "Rejection"]


class Rejection(StrEnum):
    """Why the emulator refused a request (the ``reason`` label of lpu:requests_rejected)."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    CONTEXT_LENGTH = "context_length"
    MAX_TOKENS_CAP = "max_tokens_cap"
    DEADLINE = "backend_deadline"
    QUEUE_FULL = "queue_full"
    COMPILING = "compiling"
    INJECTED_ERROR = "injected_error"


class Refused(Exception):
    def __init__(
        self, error: APIError, reason: Rejection, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class Admission:
    """A request placed on the schedule; its handler delivers it and then ends it."""

    req: CompletionRequest
    job: Job
    schedule: LiveSchedule
    model: str
    prompt_tokens: int
    finish_reason: Literal["length", "stop", "tool_calls"]
    token_ids: list[int]
    faults: FaultPlan
    predicted_ttft_s: float
    received: float
    series: ModelSeries
    tool_call: ToolCall | None = None
    """The call answered instead of text (then ``token_ids`` are positions into its pieces)."""
    schedule_header: str = ""
    """``x-lpu-schedule``: the whole schedule right after this request was placed in it."""


_STRICT = ParamPolicy(ExtraParams.ALLOW, VLLM_SAMPLING_PARAMS)
"""``strict_params``: OpenAI's parameters and vLLM's sampling extensions, as a vLLM server."""
_LENIENT = ParamPolicy(ExtraParams.PASS)


def _output_length(options: EmulatorOptions, req: CompletionRequest, allowance: int,
                   rng: np.random.Generator) -> tuple[int, Literal["length", "stop"]]:
    """Tokens to produce: the whole allowance with ``ignore_eos`` (as vLLM), else the
    configured length, raised to ``min_tokens`` (at most the allowance)."""
    if req.ignore_eos:
        return allowance, "length"
    n, finish = draw_length(options.output_length, allowance, rng)
    floor = min(req.min_tokens, allowance)
    if n < floor:
        return floor, "length" if floor == allowance else "stop"
    return n, finish


def _tool_call(req: CompletionRequest) -> ToolCall | None:
    """The tool call ``req``'s ``tool_choice`` requires (see :mod:`lpu_emulator.tools`), or
    None for a text answer; a choice the emulator cannot honour is refused (400)."""
    try:
        return tool_call_for(req)
    except APIError as exc:
        raise Refused(exc, Rejection.INVALID_REQUEST) from None


def _fingerprint(art: Artifact) -> str:
    return "fp_" + hashlib.blake2b(f"{art.name}@{art.version}".encode(), digest_size=5).hexdigest()


class Backend:
    """State of one emulated backend. Lives on one event loop; not thread-safe."""

    def __init__(
        self, options: EmulatorOptions, *, clock: Callable[[], float], metrics: EmulatorMetrics
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.faults: FaultSettings = options.faults
        self._clock = clock
        self._counter: TokenCounter = (
            HFTokenizerCounter(options.tokenizer) if options.tokenizer else EstimateCounter()
        )
        seq = np.random.SeedSequence(options.seed)
        self._length_rng, self._fault_rng = (np.random.default_rng(s) for s in seq.spawn(2))
        self._install(options.artifact.scaled(options.time_scale), options.artifact.digest)
        self.pending: Artifact | None = None
        self.ready_at = -math.inf
        self._swap_task: asyncio.Task[None] | None = None

    def _install(self, artifact: Artifact, digest: str) -> None:
        self.artifact = artifact
        # The digest of the artifact as compiled: the scaled copy is an emulator's
        # detail, and the digest must match the file an operator holds.
        self.digest = digest
        # What runs may differ from what is declared (EmulatorOptions.actual_*_factor):
        # the engine keeps the real schedule, ``artifact`` stays the declared one.
        o = self.options
        actual = artifact if o.actual_prefill_factor == o.actual_per_token_factor == 1.0 else (
            replace(artifact, prefill_s=artifact.prefill_s * o.actual_prefill_factor,
                    per_token_s=artifact.per_token_s * o.actual_per_token_factor))
        self.schedule = LiveSchedule(actual, self._clock)
        self.series = self.metrics.child(artifact.model)
        self.fingerprint = _fingerprint(artifact)

    @property
    def ready(self) -> bool:
        return self.pending is None

    def model_names(self) -> tuple[str, ...]:
        return (self.artifact.model, self.artifact.name)

    # --- admission ---------------------------------------------------------

    def admit(
        self, body: bytes, kind: Literal["chat", "completion"], deadline_ms: str | None
    ) -> Admission:
        """Place one request on the schedule, or raise :class:`Refused`."""
        received = self._clock()
        if not self.ready:
            retry = max(1, math.ceil(self.ready_at - received))
            raise Refused(
                APIError(503, "The backend is loading a new compiled artifact; retry later.",
                         type="service_unavailable", code="compiling"),
                Rejection.COMPILING, {"Retry-After": str(retry)},
            )
        try:
            req = parse_request(body, kind, params=_STRICT if self.options.strict_params
                                else _LENIENT)
        except APIError as exc:
            raise Refused(exc, Rejection.INVALID_REQUEST) from None
        if req.model not in self.model_names():
            raise Refused(_model_not_found(req.model), Rejection.UNKNOWN_MODEL)
        call = _tool_call(req)
        art = self.artifact
        n_prompt = prompt_tokens(req, self._counter)
        allowance = self._allowance(req, n_prompt)
        deadline_s = self._deadline(deadline_ms)
        self.schedule.advance()
        engine = self.schedule.engine
        predicted = engine.projected_ttft(received)
        ttft_header = {X_LPU_PREDICTED_TTFT_MS: f"{predicted * 1e3:.3f}"}
        if deadline_s is not None and predicted > deadline_s:
            raise Refused(
                APIError(429, f"The first token cannot come within the deadline: predicted"
                         f" {predicted * 1e3:.1f} ms, deadline {deadline_s * 1e3:.1f} ms.",
                         type="rate_limit_error", code="deadline_unreachable"),
                Rejection.DEADLINE, ttft_header | self.schedule_header(),
            )
        limit = self.options.max_queue
        if limit is not None and engine.would_wait(received) and engine.waiting >= limit:
            raise Refused(
                APIError(503, f"The backend queue is full ({limit} requests waiting).",
                         type="service_unavailable", code="queue_full"),
                Rejection.QUEUE_FULL, ttft_header | self.schedule_header(),
            )
        plan = plan_faults(self.faults, self._fault_rng)
        if plan.error:
            self.metrics.faults.labels(FaultKind.ERROR).inc()
            raise Refused(
                APIError(500, "The server had an error while processing your request"
                         " (injected fault).", type="server_error", code="internal_error"),
                Rejection.INJECTED_ERROR,
            )
        key = request_key(req)
        rng = self._length_rng
        if req.seed is not None:
            rng = np.random.default_rng(int.from_bytes(key[8:], "little"))
        if call is not None:
            call = call.within(allowance)
        n, finish = ((len(call.fragments), call.finish_reason) if call is not None
                     else _output_length(self.options, req, allowance, rng))
        job = self.schedule.submit(n)
        self.series.prompt_tokens.inc(n_prompt)
        placed = self._schedule_header()  # after submit: the schedule includes this request
        return Admission(
            req=req, job=job, schedule=self.schedule, model=art.model, prompt_tokens=n_prompt,
            finish_reason=finish, token_ids=token_ids(key, n) if call is None else list(range(n)),
            faults=plan, predicted_ttft_s=predicted, received=received, series=self.series,
            tool_call=call, schedule_header=placed,
        )

    def schedule_header(self) -> dict[str, str]:
        """``x-lpu-schedule`` of the schedule now: on a refusal for the schedule's sake, and on
        an answer written later than its admission (a non-streamed one, at its last token)."""
        return {X_LPU_SCHEDULE: self._schedule_header()}

    def _schedule_header(self) -> str:
        """The ``x-lpu-schedule`` value of the schedule now."""
        snap = self.schedule.snapshot()
        return ScheduleReport(snap.slots, snap.running, snap.waiting,
                              snap.slot_free_in_s).to_header()

    def _allowance(self, req: CompletionRequest, n_prompt: int) -> int:
        art = self.artifact
        asked = req.max_tokens
        if asked is not None and asked > art.max_output_tokens:
            raise Refused(
                APIError(400, f"Invalid '{req.max_tokens_param}': {asked} is above the compiled"
                         f" output cap of this model ({art.max_output_tokens}).",
                         param=req.max_tokens_param, code="invalid_value"),
                Rejection.MAX_TOKENS_CAP,
            )
        want = asked if asked is not None else min(art.max_output_tokens,
                                                   art.max_seq_len - n_prompt)
        if want < 1 or n_prompt + want > art.max_seq_len:
            raise Refused(
                context_length_error(art.max_seq_len, n_prompt, max(want, 1)),
                Rejection.CONTEXT_LENGTH,
            )
        return want

    @staticmethod
    def _deadline(raw: str | None) -> float | None:
        if raw is None:
            return None
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        if not (math.isfinite(ms) and ms >= 0):
            raise Refused(
                APIError(400, f"Invalid '{X_LPU_DEADLINE_MS}' header: expected milliseconds >= 0,"
                         f" got {raw!r}.", param=X_LPU_DEADLINE_MS, code="invalid_value"),
                Rejection.INVALID_REQUEST,
            )
        return ms / 1e3

    def end(self, adm: Admission, *, completed: bool, client_gone: bool = False) -> None:
        """The handler is done with ``adm`` (call exactly once); frees its slot if still held.

        ``completed``: every token was delivered. Otherwise the job is withdrawn
        now; ``client_gone`` says the client closed (counted as cancelled).
        """
        job = adm.job
        if completed:
            adm.schedule.finished(job)
        elif adm.schedule.withdraw(job) and client_gone:
            self.metrics.cancelled.inc()
        now = self._clock()
        if job.start <= min(job.end, now):
            self.metrics.slot_busy.inc(min(job.end, now) - job.start)

    # --- operations --------------------------------------------------------

    def swap(self, artifact: Artifact) -> float:
        """Start serving ``artifact`` (unscaled); returns seconds until it may be ready."""
        if self.pending is not None:
            raise APIError(409, f"A swap to {self.pending.name} is already in progress.",
                           type="conflict", code="swap_in_progress")
        scaled = artifact.scaled(self.options.time_scale)
        self.pending = scaled
        self.ready_at = self._clock() + scaled.compile_time_s
        self._swap_task = asyncio.get_running_loop().create_task(
            self._compile(scaled, artifact.digest))
        return scaled.compile_time_s

    async def _compile(self, scaled: Artifact, digest: str) -> None:
        await asyncio.sleep(scaled.compile_time_s)
        await self.schedule.drained()
        old = self.schedule
        self._install(scaled, digest)
        self.pending = None
        old.close()

    async def close(self) -> None:
        if self._swap_task is not None:
            self._swap_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._swap_task
        self.schedule.close()

    def load(self) -> LoadReport:
        """The ``GET /load`` report (see :mod:`lpu_protocol.load_report`)."""
        art = self.artifact
        snap = self.schedule.snapshot()
        return LoadReport(
            slots=snap.slots,
            running=snap.running,
            waiting=snap.waiting,
            slot_free_in_s=snap.slot_free_in_s,
            prefill_s=art.prefill_s,
            per_token_s=art.per_token_s,
            ready=self.ready,
            artifact=art.name,
            version=art.version,
            model=art.model,
            pending_artifact=self.pending.name if self.pending else None,
            ready_in_s=max(0.0, self.ready_at - self._clock()) if self.pending else 0.0,
            queue_limit=self.options.max_queue,
            time_scale=self.options.time_scale,
            max_seq_len=art.max_seq_len,
            max_output_tokens=art.max_output_tokens,
            compiler_version=art.compiler_version,
            precision=art.precision,
            target=art.target,
            digest=self.digest,
        )

    def refresh_metrics(self) -> None:
        art = self.artifact
        self.schedule.advance()
        engine = self.schedule.engine
        self.metrics.refresh(
            model=art.model, artifact=art.name, version=art.version, slots=art.slots,
            running=engine.running, waiting=engine.waiting, ready=self.ready,
        )
