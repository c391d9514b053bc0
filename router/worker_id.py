"""Which worker process answers: ``/admin/*`` says so (the JSON's ``worker`` field and the
``x-lpu-worker`` header), since each worker keeps its own admission and health state and
``/admin`` shows that one worker's view (``/metrics`` shows the pod's)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["WORKER_HEADER", "WorkerId"]

WORKER_HEADER = "x-lpu-worker"
"""Response header of ``/admin/*``: ``<index>; pid=<pid>``."""


@dataclass(frozen=True, slots=True)
class WorkerId:
    """This process's place among the pod's workers (a single process is worker 0 of 1)."""

    index: int = 0
    count: int = 1
    pid: int = 0
    """0 in the dataclass: :meth:`here` fills in the running process's."""

    @classmethod
    def here(cls, index: int = 0, count: int = 1) -> WorkerId:
        return cls(index, count, os.getpid())

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "pid": self.pid, "workers": self.count}

    @property
    def header(self) -> str:
        return f"{self.index}; pid={self.pid}"
