"""Each backend's active check: which path it is probed on (found once), and what an answer means.

Backends are not all LPU emulators: vLLM, TGI, SGLang, llama.cpp or a hosted API have no LPU
``/load`` and no ``/readyz``. So the path is not configured blindly but found, per backend URL,
from the first answers (docs/backends.md, "Health probing"), trying in order:

1. ``GET /load``. It becomes the check when it answers 200 with an LPU load report: a JSON object
   with a ``slot_free_in_s`` key (a malformed one still counts, and is then "down"). A 5xx or no
   answer decides nothing (down; ask again next time). Any other answer -- 404, 401, or a 200
   with another body, as vLLM's own ``/load`` (``{"server_load": 3}``) -- means "no LPU /load".
2. ``health.path`` when it is configured; otherwise ``/readyz`` (the emulator), ``/health``
   (vLLM, TGI, SGLang, llama.cpp), ``/v1/models`` (every OpenAI-compatible server). The first
   that answers anything but 404 or 405 becomes the check.

No answer at all (refused, reset, timeout) decides nothing: that check is "down" and the search
starts again at the next one. When every path says 404 the backend is down and the search is
repeated each time. The choice holds for the life of the app (a reload builds a new one) and is
logged once per backend; so is a backend on which no path answers.

What an answer means once the path is known (:class:`Check`): on ``/load``, up when the report
is valid and says ``"ready": true`` (the report is returned for the timeline); on another path,
up on any 2xx. Everything else is down, with the reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp

from lpu_protocol.load_report import LoadReport
from router.config import HealthConfig

__all__ = ["FALLBACK_PATHS", "LOAD_PATH", "Check", "Prober"]

log = logging.getLogger("lpu_router.health")

LOAD_PATH = "/load"
FALLBACK_PATHS = ("/readyz", "/health", "/v1/models")
"""Tried after ``/load`` when ``health.path`` is not configured."""
_NOT_THERE = frozenset({404, 405})
MAX_BODY_BYTES = 1 << 20
"""Largest probe body read (a 16-slot report is ~600 bytes); beyond it a ``/load`` is down."""


@dataclass(frozen=True, slots=True)
class Check:
    """One active check of one backend. Times on the router's clock."""

    ok: bool
    path: str
    """The path asked last."""
    sent_at: float
    received_at: float
    why: str = ""
    """Why it is down (empty when up)."""
    report: LoadReport | None = None
    """The backend's valid ``/load`` report, when that is its check."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None
    """None: no answer (``error`` says why)."""
    body: bytes | None
    """None when larger than :data:`MAX_BODY_BYTES`."""
    error: str
    sent_at: float
    received_at: float


class _Fit(Enum):
    CHOSEN = "chosen"
    NEXT = "next"
    UNDECIDED = "undecided"


class Prober:
    """Finds and runs the active check of every backend URL (state: the path found per URL)."""

    def __init__(self, health: HealthConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        fallback = FALLBACK_PATHS if health.path is None else (health.path,)
        self.candidates: tuple[str, ...] = tuple(dict.fromkeys((LOAD_PATH, *fallback)))
        self._timeout = aiohttp.ClientTimeout(total=health.timeout_s)
        self._clock = clock
        self._paths: dict[str, str] = {}
        self._none_answers: set[str] = set()

    def path_of(self, url: str) -> str | None:
        """The path ``url`` is checked on, once found."""
        return self._paths.get(url)

    async def check(self, session: aiohttp.ClientSession, url: str) -> Check:
        """Check ``url`` once (finding its path first, if not known yet)."""
        known = self._paths.get(url)
        if known is not None:
            return _judge(known, await self._get(session, url, known))
        last: _Answer | None = None
        for path in self.candidates:
            last = await self._get(session, url, path)
            fit = _fit(path, last)
            if fit is _Fit.NEXT:
                continue
            if fit is _Fit.CHOSEN:
                self._choose(url, path)
            return _judge(path, last)
        assert last is not None  # candidates is never empty
        if url not in self._none_answers:
            self._none_answers.add(url)
            log.warning("backend %s serves none of the health paths (%s): down until one"
                        " answers", url, ", ".join(self.candidates))
        return Check(False, self.candidates[-1], last.sent_at, last.received_at,
                     why=f"none of {', '.join(self.candidates)} is served")

    def _choose(self, url: str, path: str) -> None:
        self._paths[url] = path
        if path == LOAD_PATH:
            log.info("backend %s is checked on GET %s (an LPU load report)", url, LOAD_PATH)
        else:
            log.warning("backend %s has no LPU %s: health is probed on GET %s, and admission"
                        " counts only this router's own reservations on it (docs/backends.md)",
                        url, LOAD_PATH, path)

    async def _get(self, session: aiohttp.ClientSession, url: str, path: str) -> _Answer:
        sent = self._clock()
        try:
            # identity: the shared session does not decompress, and a report is ~600 bytes.
            async with session.get(url + path, timeout=self._timeout,
                                   headers={"Accept-Encoding": "identity"}) as resp:
                body = await _read_capped(resp)
                return _Answer(resp.status, body, "", sent, self._clock())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return _Answer(None, None, f"{type(exc).__name__}: {exc}", sent, self._clock())


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None past :data:`MAX_BODY_BYTES` (then the connection is not reused)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(body: bytes | None) -> Mapping[str, Any] | None:
    if body is None:
        return None
    try:
        raw = json.loads(body)
    except ValueError:
        return None
    return raw if isinstance(raw, Mapping) else None


def _fit(path: str, answer: _Answer) -> _Fit:
    """Whether ``answer`` makes ``path`` the backend's check."""
    if answer.status is None:
        return _Fit.UNDECIDED
    if path == LOAD_PATH:
        if answer.status >= 500:
            return _Fit.UNDECIDED
        raw = _decoded(answer.body) if answer.status == 200 else None
        return _Fit.CHOSEN if raw is not None and "slot_free_in_s" in raw else _Fit.NEXT
    return _Fit.NEXT if answer.status in _NOT_THERE else _Fit.CHOSEN


def _judge(path: str, answer: _Answer) -> Check:
    """What ``answer`` says about the backend, ``path`` being its check."""
    def down(why: str, report: LoadReport | None = None) -> Check:
        return Check(False, path, answer.sent_at, answer.received_at, f"GET {path}: {why}",
                     report)

    if answer.status is None:
        return down(answer.error)
    if path != LOAD_PATH:
        if 200 <= answer.status < 300:
            return Check(True, path, answer.sent_at, answer.received_at)
        return down(str(answer.status))
    if answer.status != 200:
        return down(str(answer.status))
    if answer.body is None:
        return down(f"report larger than {MAX_BODY_BYTES} bytes")
    try:
        raw = json.loads(answer.body)
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        report = LoadReport.from_mapping(raw)
    except ValueError as exc:
        return down(str(exc))
    if not report.ready:
        return down("not ready (its report says so)", report)
    return Check(True, path, answer.sent_at, answer.received_at, report=report)
