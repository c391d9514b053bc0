"""The fidelity benchmark's Markdown: the table and sentences computed from its numbers.

Every sentence is derived from the figures in the same document (the target check reads the
500-stream row; the limit reads CPU per token, tokens per second and the cores), so the text
cannot claim what the numbers do not show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = [
    "TARGET_P99_MS", "TARGET_STREAMS", "markdown", "quantum_ms", "scheduling",
    "tokens_per_write", "write_markdown",
]

TARGET_P99_MS = 5.0
TARGET_STREAMS = 500


def _f(x: float, digits: int = 1) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "> 10000"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:.{digits}f}" if digits else f"{x:,.0f}".replace(",", " ")


def _offered_per_stream(doc: dict[str, Any], max_tokens: int) -> float:
    """Tokens per second one closed-loop stream asks for at zero lateness and zero gap."""
    service_s = (float(doc["prefill_ms"]) + (max_tokens - 1) * float(doc["per_token_ms"])) / 1e3
    return max_tokens / service_s


def _target(rows: list[dict[str, Any]]) -> str:
    at = [r for r in rows if r["streams"] == TARGET_STREAMS]
    if not at:
        return f"No run at {TARGET_STREAMS} streams: the target was not measured."
    r = at[0]
    p99 = r["server_all_p99_ms"]
    verdict = "holds" if p99 <= TARGET_P99_MS else "does not hold"
    return (f"Target (server-side lateness p99 <= {TARGET_P99_MS:g} ms at {TARGET_STREAMS}"
            f" streams): the emulator's per-token p99 over all tokens is at most {_f(p99, 1)}"
            f" ms (first tokens {_f(r['server_first_p99_ms'], 1)} ms, later tokens"
            f" {_f(r['server_later_p99_ms'], 1)} ms), so the target **{verdict}** on this"
            f" machine.")


def quantum_ms(r: dict[str, Any]) -> float:
    """The delivery quantum of a replica in run ``r`` (``lpu_emulator.delivery``): a stream
    writes at most once per quantum."""
    per_replica = math.ceil(int(r["streams"]) / int(r["replicas"]))
    budget = float(r["write_budget_per_s"])
    return max(float(r["tick_ms"]), per_replica / budget * 1e3 if budget else 0.0)


def tokens_per_write(quantum: float, per_token_ms: float) -> int:
    """Tokens a write carries by design (``lpu_emulator.ticker``): after a write at its last
    token's due time ``t``, the next carries every token due up to the first one after
    ``t + quantum``; the earliest of them is ``(m - 1) * per_token`` late."""
    return math.floor(quantum / per_token_ms) + 1


def scheduling(rows: list[dict[str, Any]]) -> str:
    """The emulator's scheduling class in ``rows`` as a clause (results written before
    ``--realtime`` existed ran under SCHED_OTHER)."""
    found = sorted({str(r.get("emulator_scheduling", "SCHED_OTHER")) for r in rows})
    if found == ["SCHED_OTHER"]:
        return "emulator processes SCHED_OTHER like the clients"
    return ("emulator processes under " + " / ".join(found)
            + " (`--realtime`), clients SCHED_OTHER")


def _limit(rows: list[dict[str, Any]], cores: int, per_stream: float,
           per_token_ms: float) -> list[str]:
    out = []
    for r in rows:
        emu, cli = r["emulator_cpu_cores"], r["client_cpu_cores"]
        offered = r["streams"] * per_stream
        share = r["tokens_per_s"] / offered
        busy = emu + cli
        state = "saturated" if busy >= 0.9 * cores else "not saturated"
        q = quantum_ms(r)
        m = tokens_per_write(q, per_token_ms)
        w = float(r.get("writes_per_s", math.nan))
        out.append(
            f"- {r['streams']} streams: {_f(r['tokens_per_s'], 0)} tokens/s"
            f" ({share:.0%} of the {_f(offered, 0)} a zero-lateness closed loop would ask for)"
            f" in {_f(w, 0)} writes/s ({r['tokens_per_s'] / w:.1f} tokens a write; by design"
            f" quantum {q:g} ms, {m} token{'s' if m > 1 else ''} a write, the earliest"
            f" {(m - 1) * per_token_ms:.1f} ms late); emulator"
            f" {r['emulator_cpu_us_per_token']:.2f} us/token ="
            f" {_f(float(r.get('emulator_cpu_us_per_write', math.nan)))} us/write ="
            f" {emu:.2f} cores, clients {cli:.2f} cores: {busy:.2f} of {cores} cores,"
            f" {state}; each emulator process waited for a core"
            f" {r['emulator_runqueue_wait_share']:.0%} of the time; server p99"
            f" {_f(r['server_all_p99_ms'])} ms, client p99 {_f(r['client_p99_ms'])} ms."
        )
    return out


def _needed(rows: list[dict[str, Any]], cores: int, per_token_ms: float) -> list[str]:
    """What the target needs at the target's stream count, in cores at this run's cost per
    write (emulator and clients): the limit read off the same row."""
    at = [r for r in rows if r["streams"] == TARGET_STREAMS]
    if not at or not at[0].get("writes_per_s") or at[0]["server_all_p99_ms"] <= TARGET_P99_MS:
        return []
    r = at[0]
    m = tokens_per_write(TARGET_P99_MS, per_token_ms)  # the earliest token under the target
    need = r["tokens_per_s"] / m
    emu_us = float(r["emulator_cpu_us_per_write"])
    cli_us = r["client_cpu_cores"] / float(r["writes_per_s"]) * 1e6
    read_ms = float(r.get("client_read_ms", 0.0))
    # Polled clients read each stream once per interval, whatever the emulator's writes.
    emu_cores = need * emu_us / 1e6
    cli_cores = r["client_cpu_cores"] if read_ms > 0 else need * cli_us / 1e6
    verdict = (", with no idle left for the emulator to wake on time: the machine's cores, not"
               " the schedule, are the limit." if emu_cores + cli_cores >= 0.9 * cores else
               ", which fits: CPU alone does not explain the miss.")
    per_write = r["tokens_per_s"] / float(r["writes_per_s"])
    bound = (f"; an upper bound, as its writes carried {per_write:.1f} tokens and part of the"
             " cost is per token or per request" if per_write > m else "")
    return [
        f"What the target needs: a later token is late by design up to the tokens before it in"
        f" its write, so a p99 under {TARGET_P99_MS:g} ms needs writes of at most {m} tokens"
        f" (the earliest {(m - 1) * per_token_ms:.1f} ms late) even before any wake-up"
        f" lateness: at {_f(r['tokens_per_s'], 0)} tokens/s that is {_f(need, 0)} writes/s."
        f" At this run's cost per write ({emu_us:.1f} us in the emulator"
        + (f", everything it does divided by its writes{bound}; the clients, which read every"
           f" {read_ms:g} ms whatever the writes, as measured" if read_ms > 0 else
           f", {cli_us:.1f} us in the clients, everything either does divided by its"
           f" writes{bound}")
        + ") that is"
        f" {emu_cores:.2f} + {cli_cores:.2f} ="
        f" {emu_cores + cli_cores:.2f} cores of the machine's {cores}{verdict}",
        "",
    ]


def markdown(doc: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = doc["results"]
    m = doc["machine"]
    cores = int(m["nproc"])
    first = rows[0] if rows else {}
    max_tokens = int(doc.get("max_tokens", 300))
    lines = [
        "# Emulator timing fidelity",
        "",
        f"Command: `{doc['command']}`, under `flock /tmp/lpu-measure.lock`.",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['platform']},"
        f" {m['date']}. {doc.get('load_note', '')}".rstrip(),
        "",
        f"Setup: {first.get('replicas', '?')} replicas in {first.get('processes', '?')} emulator"
        f" processes (`lpu-emulator --processes`), {first.get('clients', '?')} client processes"
        f" (`benchmarks/fidelity_client.py`), {max_tokens} tokens per request at"
        f" {doc['prefill_ms']:g} ms prefill and {doc['per_token_ms']:g} ms per token, slots ="
        f" streams (nothing queues), tick {first.get('tick_ms', '?')} ms, write budget"
        f" {first.get('write_budget_per_s', '?')}/s per replica, {scheduling(rows)}."
        " Server lateness: the"
        " emulator's `lpu_emulator_token_lateness_seconds` (every token, time written minus"
        " time scheduled), quantiles as the upper bound of their bucket. Client lateness: each"
        " token's arrival minus `t_send + prefill + k * per_token` (includes loopback and the"
        " client's own loop)"
        + (f"; the clients read every connection every {first['client_read_ms']:g} ms"
           " (`--client-read-ms`), so their lateness includes up to that much waiting to be"
           " read, by design, and their CPU does not grow with the emulator's writes"
           if float(first.get("client_read_ms", 0.0)) > 0 else
           "; the clients read each write as it arrives (`--client-read-ms 0`)")
        + ". CPU: user + system over the window from `/proc` of every"
        " emulator process, and of the client processes. Runqueue wait: the share of wall"
        " time an emulator process was runnable but had no core (`/proc/PID/schedstat`): the"
        " machine's other work (and the clients) holding the emulator back.",
        "",
        "| streams | tokens/s | server first p50 / p99 / max (ms) | server later p50 / p99 /"
        " max (ms) | server all p99 (ms) | client p50 / p99 / max (ms) | client first p99 (ms)"
        " | emulator us/token | emulator cores | client cores | emulator runqueue wait |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_table_row(r) for r in rows]
    counted = all(r["server_tokens_total"] == r["client_tokens_total"] for r in rows)
    lines += [
        "",
        "Every run: the emulator's histograms counted "
        + ("exactly the tokens the clients received." if counted else
           "**not** the tokens the clients received (see the JSON)."),
        "",
        _target(rows),
        "",
        *_needed(rows, cores, float(doc["per_token_ms"])),
        "Where the limit is (cores used against the machine's):",
        "",
        *_limit(rows, cores, _offered_per_stream(doc, max_tokens), float(doc["per_token_ms"])),
        "",
    ]
    for v in doc.get("variants", []):
        lines += _variant(v, cores, _offered_per_stream(doc, max_tokens),
                          float(doc["per_token_ms"]))
    return "\n".join(lines)


def _variant(v: dict[str, Any], cores: int, per_stream: float,
             per_token_ms: float) -> list[str]:
    """A run with other delivery settings (``{"command", "results"}``), measured in the same
    session: the table, the target read off it, and its limit lines."""
    rows: list[dict[str, Any]] = v["results"]
    reads = sorted({float(r.get("client_read_ms", 0.0)) for r in rows})
    return [
        f"## Other settings: `{v['command']}`",
        "",
        f"Tick {rows[0]['tick_ms']:g} ms, write budget {rows[0]['write_budget_per_s']:g}/s per"
        f" replica, {scheduling(rows)}; clients read "
        + ", ".join(f"every {x:g} ms" if x > 0 else "each write as it arrives" for x in reads)
        + f". {v.get('load_note', '')}".rstrip(),
        "",
        "| streams | tokens/s | server first p50 / p99 / max (ms) | server later p50 / p99 /"
        " max (ms) | server all p99 (ms) | client p50 / p99 / max (ms) | client first p99 (ms)"
        " | emulator us/token | emulator cores | client cores | emulator runqueue wait |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[_table_row(r) for r in rows],
        "",
        _target(rows),
        "",
        *_needed(rows, cores, per_token_ms),
        *_limit(rows, cores, per_stream, per_token_ms),
        "",
    ]


def _table_row(r: dict[str, Any]) -> str:
    return (
            f"| {r['streams']} | {_f(r['tokens_per_s'], 0)} | {_f(r['server_first_p50_ms'])} /"
            f" {_f(r['server_first_p99_ms'])} / {_f(r['server_first_max_ms'])} |"
            f" {_f(r['server_later_p50_ms'])} / {_f(r['server_later_p99_ms'])} /"
            f" {_f(r['server_later_max_ms'])} | {_f(r['server_all_p99_ms'])} |"
            f" {_f(r['client_p50_ms'])} / {_f(r['client_p99_ms'])} / {_f(r['client_max_ms'])} |"
            f" {_f(r['client_first_p99_ms'])} | {r['emulator_cpu_us_per_token']:.2f} |"
            f" {r['emulator_cpu_cores']:.2f} | {r['client_cpu_cores']:.2f} |"
            f" {r['emulator_runqueue_wait_share']:.0%} |"
    )


def write_markdown(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(markdown(doc))
    return path
