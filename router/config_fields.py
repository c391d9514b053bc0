"""Typed reads from one TOML table that collect errors instead of raising.

Each read records the key as known; :meth:`Fields.finish` then reports every key the table holds
that no read asked for, so a typo (``ttft_slo_ms`` for ``ttft_slo_s``) is an error, not a silent
default. Errors are ``path.key: message`` strings appended to a shared list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Fields"]

_MISSING = object()


class Fields:
    """Reader over the table ``path`` of a config, appending problems to ``errors``."""

    def __init__(self, raw: Mapping[str, Any], section: str, errors: list[str]) -> None:
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            errors.append(f"{section}: must be a table ([{section}])")
            table = {}
        self._init(table, section, errors)

    @classmethod
    def of(cls, table: Mapping[str, Any], path: str, errors: list[str]) -> Fields:
        self = cls.__new__(cls)
        self._init(table, path, errors)
        return self

    def _init(self, table: Mapping[str, Any], path: str, errors: list[str]) -> None:
        self._table = table
        self._path = path
        self._errors = errors
        self._known: set[str] = set()

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self._table

    def raw(self, key: str) -> Any:
        """The value as given (None when absent), marked as read."""
        self._known.add(key)
        return self._table.get(key)

    def sub(self, key: str) -> Fields:
        """A reader over the sub-table ``key`` (marked as read; an error when not a table)."""
        table = self.raw(key)
        if not isinstance(table, Mapping):
            self.error(key, f"must be a table ([{self._path}.{key}])")
            table = {}
        return Fields.of(table, f"{self._path}.{key}", self._errors)

    def error(self, key: str, message: str) -> None:
        self._errors.append(f"{self._path}.{key}: {message}")

    def finish(self) -> None:
        """Report keys nobody read."""
        for key in sorted(set(self._table) - self._known):
            self.error(key, "unknown key")

    def _get(self, key: str) -> Any:
        self._known.add(key)
        return self._table.get(key, _MISSING)

    def string(self, key: str, default: str) -> str:
        v = self._get(key)
        if v is _MISSING:
            return default
        if not isinstance(v, str):
            self.error(key, f"expected a string, got {v!r}")
            return default
        return v

    def opt_str(self, key: str) -> str | None:
        v = self._get(key)
        if v is _MISSING:
            return None
        if not isinstance(v, str) or not v:
            self.error(key, f"expected a non-empty string, got {v!r}")
            return None
        return v

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        v = self.string(key, default)
        if v not in allowed:
            self.error(key, f"expected one of {', '.join(allowed)}, got {v!r}")
            return default
        return v

    def str_list(self, key: str) -> list[str]:
        v = self._get(key)
        if v is _MISSING:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            self.error(key, f"expected an array of non-empty strings, got {v!r}")
            return []
        return list(v)

    def opt_int(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self._get(key)
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.error(key, f"expected an integer, got {v!r}")
            return None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.error(key, f"must be in [{_bound(lo)}, {_bound(hi)}], got {v}")
            return None
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            self.error(key, f"expected true or false, got {v!r}")
            return default
        return v

    def integer(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None
                ) -> int:
        v = self.opt_int(key, lo=lo, hi=hi)
        return default if v is None else v

    def opt_number(self, key: str, *, lo: float | None = None, hi: float | None = None,
                   lo_open: bool = False) -> float | None:
        v = self._get(key)
        if v is _MISSING:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            self.error(key, f"expected a finite number, got {v!r}")
            return None
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        if low_bad or (hi is not None and v > hi):
            left = "(" if lo_open else "["
            self.error(key, f"must be in {left}{_bound(lo)}, {_bound(hi)}], got {v}")
            return None
        return float(v)

    def number(self, key: str, default: float, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False) -> float:
        v = self.opt_number(key, lo=lo, hi=hi, lo_open=lo_open)
        return default if v is None else v


def _bound(b: float | None) -> str:
    return "inf" if b is None else f"{b:g}"
