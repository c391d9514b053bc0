"""The figures of a trace soak (:mod:`benchmarks.trace_soak`) that are not experiment 8's: the
emulators' own lateness histograms, the router's books against the client's, and the claims.
Pure: texts and records in, numbers out.

Lateness is the emulator's (time written minus time scheduled), read from each emulator's
``/metrics`` as a Prometheus histogram and summed over the emulators; its quantiles are
linear within a bucket (as ``histogram_quantile`` reads them), but the claim "p99 <= bound" is
checked exactly when the bound is a bucket edge: at least 99% of the observations lie in the
buckets at or below it.

The books (every count from the router's pod-wide ``/metrics``, all workers, after the run):

* ``admitted = finished``: admitted = completed + failed + cancelled;
* ``sent = outcomes``: requests the client sent = completed + failed + cancelled + rejected;
* ``received = sent``: the router counted every request the client sent;
* ``completed agrees``: the client's completed streams = the router's completed;
* ``none in flight``: the in-flight gauge is 0 once the run has settled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.records import ClientOutcome, RequestRecord

__all__ = ["LATENESS_SERIES", "books", "claims", "lateness", "quantile"]

LATENESS_SERIES = ("lpu_emulator_token_lateness_seconds", "lpu:token_delivery_lateness_seconds")
"""The emulator's lateness histograms, preferred first: per token (every streamed token's time
written minus time scheduled, :mod:`lpu_emulator.lateness`), else per write (the lateness of
each write's earliest token, in emulators without the first)."""


def _buckets(texts: Sequence[str], name: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of histogram ``name`` summed over ``texts``, by the value of
    its ``token`` label (``"all"`` when it has none)."""
    out: dict[str, dict[float, float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name != name:
                continue
            for s in fam.samples:
                if s.name == name + "_bucket":
                    per = out.setdefault(s.labels.get("token", "all"), {})
                    le = float(s.labels["le"])
                    per[le] = per.get(le, 0.0) + s.value
    return out


def quantile(cumulative: Mapping[float, float], q: float) -> float:
    """The ``q`` quantile (0..1) of a histogram given as cumulative counts by upper edge
    (``+Inf`` included), linear within its bucket; NaN when empty, the highest finite edge
    when it falls in the ``+Inf`` bucket."""
    edges = sorted(cumulative)
    total = cumulative[edges[-1]] if edges else 0.0
    if total <= 0:
        return math.nan
    rank, lo, below = q * total, 0.0, 0.0
    for edge in edges:
        count = cumulative[edge]
        if count >= rank:
            if math.isinf(edge):
                return lo
            return lo + (edge - lo) * ((rank - below) / (count - below) if count > below else 1)
        lo, below = edge, count
    return lo


def _summary(cumulative: Mapping[float, float], bound_s: float) -> dict[str, Any]:
    edges = sorted(cumulative)
    total = cumulative[edges[-1]] if edges else 0.0
    within = cumulative.get(bound_s)
    return {"count": int(total), "p50_s": quantile(cumulative, 0.50),
            "p99_s": quantile(cumulative, 0.99), "p999_s": quantile(cumulative, 0.999),
            "share_within_bound": (within / total) if within is not None and total else None,
            "over_1s": int(total - cumulative.get(1.0, total))}


def lateness(texts: Sequence[str], bound_s: float) -> dict[str, Any]:
    """The emulators' lateness from their ``/metrics`` texts: the first series of
    :data:`LATENESS_SERIES` with observations, per ``token`` label and over all; each with its
    count, p50 / p99 / p99.9 (seconds) and the share of observations within ``bound_s`` (None
    unless ``bound_s`` is a bucket edge)."""
    for name in LATENESS_SERIES:
        per = _buckets(texts, name)
        if any(max(c.values(), default=0.0) > 0 for c in per.values()):
            every: dict[float, float] = {}
            for c in per.values():
                for le, v in c.items():
                    every[le] = every.get(le, 0.0) + v
            return {"series": name, "bound_s": bound_s, "all": _summary(every, bound_s),
                    "by_token": {k: _summary(c, bound_s) for k, c in sorted(per.items())}}
    return {"series": None, "bound_s": bound_s, "all": None, "by_token": {}}


def books(server: Mapping[str, Any], records: Sequence[RequestRecord]) -> dict[str, Any]:
    """The router's counts (:func:`benchmarks.soak.server_counts` of its ``/metrics``) against
    the client's ``records``, and each check of the module docstring."""
    fin: Mapping[str, float] = server["finished"]
    completed, failed, cancelled = (int(fin.get(k, 0)) for k in ("completed", "failed",
                                                                  "cancelled"))
    rejected = int(sum(server["rejected"].values()))
    admitted, sent = int(server["admitted"]), len(records)
    client = Counter(r.outcome for r in records)
    checks = {
        "admitted_eq_finished": admitted == completed + failed + cancelled,
        "sent_eq_outcomes": sent == completed + failed + cancelled + rejected,
        "received_eq_sent": int(server["received"]) == sent,
        "completed_agrees": client.get(ClientOutcome.COMPLETED.value, 0) == completed,
        "none_in_flight": server["in_flight"] == 0,
    }
    return {"sent": sent, "received": int(server["received"]),
            "server": {"admitted": admitted, "completed": completed, "failed": failed,
                       "cancelled": cancelled, "rejected": rejected,
                       "rejected_by_reason": {k: int(v) for k, v in server["rejected"].items()},
                       "in_flight": int(server["in_flight"])},
            "client": {o.value: int(client.get(o.value, 0)) for o in ClientOutcome},
            "client_statuses": dict(sorted(Counter(str(r.status) for r in records).items())),
            "checks": checks}


def claims(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the soak with whether it held, from the figures of ``doc``
    (:func:`benchmarks.trace_soak.soak`'s document)."""
    b, total, late = doc["books"], doc["replay"]["total"], doc["lateness"]
    srv = b["server"]
    finished = srv["completed"] + srv["failed"] + srv["cancelled"]
    problems = doc["replay"]["ended_once_problems"]
    out = [
        {"claim": "every admitted request ends once (on exactly one recorded schedule; a"
                  " refused one on none)", "held": not problems,
         "figures": f"{len(problems)} problems"},
        {"claim": "router books: admitted = completed + failed + cancelled",
         "held": b["checks"]["admitted_eq_finished"],
         "figures": f"admitted {srv['admitted']}, finished {finished}"},
        {"claim": "router books: sent = completed + failed + cancelled + rejected",
         "held": b["checks"]["sent_eq_outcomes"] and b["checks"]["received_eq_sent"],
         "figures": f"sent {b['sent']}, received {b['received']}, finished {finished}"
                    f" + rejected {srv['rejected']}"},
        {"claim": "the client's completed streams = the router's completed",
         "held": b["checks"]["completed_agrees"],
         "figures": f"client {b['client']['completed']}, router {b['server']['completed']}"},
        {"claim": "nothing in flight after the run", "held": b["checks"]["none_in_flight"],
         "figures": f"in flight {b['server']['in_flight']}"},
        {"claim": "0 TTFT SLO violations among admitted requests on the recorded schedules",
         "held": total["violations"] == 0,
         "figures": f"{total['violations']} of {total['admitted']} admitted"},
    ]
    every = late["all"]
    bound_ms = late["bound_s"] * 1e3
    if every is None:
        out.append({"claim": f"emulator lateness p99 <= {bound_ms:g} ms", "held": False,
                    "figures": "no lateness histogram on the emulators' /metrics"})
    else:
        share = every["share_within_bound"]
        out.append({"claim": f"emulator lateness p99 <= {bound_ms:g} ms ({late['series']})",
                    "held": share is not None and share >= 0.99,
                    "figures": f"p99 {every['p99_s'] * 1e3:.2f} ms (linear in its bucket),"
                               f" {every['count']} observations,"
                               + (f" {share * 100:.3f}% within {bound_ms:g} ms"
                                  if share is not None else " bound not a bucket edge")})
    return out
