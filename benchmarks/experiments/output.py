"""How an experiment writes its files: ``<name>.md`` (table), ``<name>.png`` (plot),
``<name>.json`` (numbers), all in the output folder. Plots use matplotlib's Agg backend."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, files only
import matplotlib.pyplot as plt

from benchmarks.experiments import ExperimentResult
from benchmarks.machine import describe

__all__ = ["fmt_ms", "fmt_pct", "machine", "md_table", "plt", "write_experiment"]


def fmt_ms(seconds: float | None, digits: int = 1) -> str:
    """Seconds as milliseconds for a table; '-' for missing or not finite."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1e3:.{digits}f}"


def fmt_pct(share: float | None) -> str:
    if share is None or not math.isfinite(share):
        return "-"
    return f"{share * 100:.1f}%"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def machine() -> dict[str, Any]:
    """Where the figures were measured (see :mod:`benchmarks.machine`)."""
    return describe()


def _clean(v: Any) -> Any:
    """JSON without NaN/inf (they become null)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def write_experiment(out_dir: Path, name: str, title: str, *, intro: str, table_md: str,
                     summary: str, figure: Any, data: Mapping[str, Any],
                     elapsed_s: float) -> ExperimentResult:
    """Write the three files and return the result the sweep indexes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = f"{name}.png"
    figure.savefig(out_dir / png, dpi=110, bbox_inches="tight")
    plt.close(figure)
    md = f"# {title}\n\n{intro}\n\n{table_md}\n{summary}\n\n![{title}]({png})\n"
    (out_dir / f"{name}.md").write_text(md, "utf-8")
    doc = {"name": name, "title": title, "elapsed_s": elapsed_s, "machine": machine(),
           "table_md": table_md, "summary": summary, "plots": [png], **data}
    (out_dir / f"{name}.json").write_text(json.dumps(_clean(doc), indent=1) + "\n", "utf-8")
    return ExperimentResult(name, title, table_md, summary, [png], dict(data), elapsed_s)
