"""What reading a request body costs: ``json.loads`` (before issue 10) against
:func:`lpu_protocol.json_body.parse_body` (top-level spans, depth bound, lone-surrogate check), and
forwarding it with a new allowance: ``json.dumps`` of the whole body against a splice.

    python -m benchmarks.body_parse            # prints a markdown table (milliseconds)

Each figure is the best of several interleaved runs (a busy machine only adds time), so the
ratios in one run are what to read, not the absolute numbers.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

from lpu_protocol.json_body import parse_body

__all__ = ["bodies", "main", "measure"]

_RECORD = frozenset({"model", "max_tokens", "max_completion_tokens"})


def bodies() -> dict[str, bytes]:
    """Chat bodies from 300 bytes to 4 MB: plain, non-ASCII, code-like (brackets in the text)
    and emoji sent as escaped surrogate pairs (what ``ensure_ascii`` clients send)."""
    def chat(text: str, *, ascii_only: bool = True) -> bytes:
        doc = {"model": "llama-3.1-8b-instant", "stream": True,
               "stream_options": {"include_usage": True},
               "messages": [{"role": "system", "content": "You are helpful."},
                            {"role": "user", "content": text}]}
        return json.dumps(doc, ensure_ascii=ascii_only).encode()

    return {
        "small (300 B)": chat("word " * 20),
        "64 KB": chat("word " * 13_000),
        "4 MB ASCII": chat("word " * 800_000),
        "4 MB non-ASCII": chat("héllo wörld " * 340_000, ascii_only=False),
        "4 MB code": chat("f(x[1]){} " * 400_000),
        "3 MB escaped emoji": chat("hi \U0001F600 " * 200_000),
    }


def _best_ms(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def _loads_then_dumps(raw: bytes) -> bytes:
    body = json.loads(raw)
    body["max_tokens"] = 10
    return json.dumps(body, separators=(",", ":")).encode()


def _parse_then_splice(raw: bytes) -> bytes:
    return parse_body(raw, _RECORD).splice({"max_tokens": b"10"})


def measure(repeat: int = 9) -> list[tuple[str, float, float, float, float]]:
    """Rows of (body, json.loads, parse_body, loads+dumps, parse+splice) in milliseconds."""
    rows = []
    for name, raw in bodies().items():
        n = max(3, int(1e6 / len(raw)))
        rows.append((
            name,
            _best_ms(lambda raw=raw: json.loads(raw), n, repeat),  # type: ignore[misc]
            _best_ms(lambda raw=raw: parse_body(raw, _RECORD), n, repeat),  # type: ignore[misc]
            _best_ms(lambda raw=raw: _loads_then_dumps(raw), n, repeat),  # type: ignore[misc]
            _best_ms(lambda raw=raw: _parse_then_splice(raw), n, repeat),  # type: ignore[misc]
        ))
    return rows


def main() -> None:
    print("| body | json.loads | parse_body | loads + dumps | parse + splice |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, loads, parse, dumps, splice in measure():
        print(f"| {name} | {loads:.3f} | {parse:.3f} | {dumps:.3f} | {splice:.3f} |")


if __name__ == "__main__":
    main()
