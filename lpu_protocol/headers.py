"""The ``x-lpu-*`` HTTP header names, written once for the router, the emulator and the benchmarks.

Each constant's docstring says who sets the header, on what, and its unit. Names are
lower case, as aiohttp's case-insensitive mappings and HTTP/2 want them. Millisecond
values are decimal text (``"123.4"``), never with a unit suffix.

Request, router -> backend:

* :data:`X_LPU_DEADLINE_MS`

Responses, backend -> router (the router passes them through to the client):

* :data:`X_LPU_PREDICTED_TTFT_MS` (the backend's own prediction),
  :data:`X_LPU_ARTIFACT`, :data:`X_LPU_ARTIFACT_VERSION`;
* :data:`X_LPU_SCHEDULE` (the backend's whole schedule; never passed to the client)

Responses, router -> client:

* admitted: :data:`X_LPU_BUCKET`, :data:`X_LPU_MAX_TOKENS`, :data:`X_LPU_SPILLED_FROM` (when
  the request spilled to a larger shape),
  :data:`X_LPU_PREDICTED_TTFT_MS` (the router's prediction), and when the allowance
  was lowered :data:`X_LPU_MAX_TOKENS_CLAMPED` and :data:`X_LPU_MAX_TOKENS_CLAMPED_FROM`;
* refused: :data:`X_LPU_REJECT_REASON`, and when computed :data:`X_LPU_PREDICTED_WAIT_MS`
  and :data:`X_LPU_PREDICTED_TTFT_MS`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "X_LPU_ARTIFACT",
    "X_LPU_ARTIFACT_VERSION",
    "X_LPU_BUCKET",
    "X_LPU_DEADLINE_MS",
    "X_LPU_MAX_TOKENS",
    "X_LPU_MAX_TOKENS_CLAMPED",
    "X_LPU_MAX_TOKENS_CLAMPED_FROM",
    "X_LPU_PREDICTED_TTFT_MS",
    "X_LPU_PREDICTED_WAIT_MS",
    "X_LPU_REJECT_REASON",
    "X_LPU_SCHEDULE",
    "X_LPU_SPILLED_FROM",
]

X_LPU_DEADLINE_MS: Final = "x-lpu-deadline-ms"
"""Set by the router on the request it forwards; read by the backend. Milliseconds from
the backend's receipt of the request by which its first token must be produced; a backend
that cannot meet it refuses at once (429 ``deadline_unreachable``). Never forwarded from a
client: the router sets its own."""

X_LPU_PREDICTED_TTFT_MS: Final = "x-lpu-predicted-ttft-ms"
"""Milliseconds until the first token, as predicted. Set by the backend on every answer to a
completion request (admitted, or refused for the deadline: then the router reads it to raise
its timeline's floor), and by the router on its own answers (its prediction: admitted, or
refused when it computed one)."""

X_LPU_PREDICTED_WAIT_MS: Final = "x-lpu-predicted-wait-ms"
"""Set by the router on an admission refusal when it computed one: milliseconds the request
would have waited for a slot."""

X_LPU_REJECT_REASON: Final = "x-lpu-reject-reason"
"""Set by the router on every admission refusal: why, one of ``router.outcomes.RejectReason``."""

X_LPU_BUCKET: Final = "x-lpu-bucket"
"""Set by the router on a proxied answer: the name of the bucket (compiled shape) that served it."""

X_LPU_SPILLED_FROM: Final = "x-lpu-spilled-from"
"""Set by the router on a proxied answer that spilled to a larger shape: the name of the
request's own (smallest fitting) bucket; :data:`X_LPU_BUCKET` names the one that served it."""

X_LPU_MAX_TOKENS: Final = "x-lpu-max-tokens"
"""Set by the router on a proxied answer: the output allowance (tokens) it forwarded."""

X_LPU_MAX_TOKENS_CLAMPED: Final = "x-lpu-max-tokens-clamped"
"""Set by the router when it lowered the client's allowance: why, ``bucket_cap`` or
``degraded``."""

X_LPU_MAX_TOKENS_CLAMPED_FROM: Final = "x-lpu-max-tokens-clamped-from"
"""Set by the router when it lowered the client's allowance: the allowance the client asked
for (tokens)."""

X_LPU_ARTIFACT: Final = "x-lpu-artifact"
"""Set by the backend on every completion answer: the name of the artifact that served it."""

X_LPU_ARTIFACT_VERSION: Final = "x-lpu-artifact-version"
"""Set by the backend on every completion answer: that artifact's version string."""

X_LPU_SCHEDULE: Final = "x-lpu-schedule"
"""Set by the backend on every answer to a completion request (optional for a third-party
backend): its whole schedule when it wrote the answer, admitted (the request included) or
refused for the deadline or a full queue. ``slots;running;waiting;free_ms,...``, see
:class:`lpu_protocol.load_report.ScheduleReport`. The router merges it into the replica's
timeline and strips it from what the client sees (it reveals the backend's load)."""
