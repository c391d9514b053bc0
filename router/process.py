"""What the router process asks of the operating system at start-up.

* **File descriptors.** Every client connection is one descriptor and may hold one upstream
  connection too; with the usual soft limit of 1024 the process runs out long before a
  ``server.max_connections`` of 1024 is reached, and then the event loop (libuv) accepts and
  at once closes every waiting connection: clients see resets, not the router's 503.
  :func:`raise_fd_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard one, and
  :func:`connection_cap` lowers the connection cap to what the limit can hold.
* **Freed memory.** glibc serves a large allocation from ``mmap`` (given back to the system on
  ``free``) only above ``M_MMAP_THRESHOLD``, and raises that threshold to the size of every
  mmapped block freed (up to 32 MiB): after the first 4 MiB request body, every later one
  comes from the heap, whose freed pages stay in the process. :func:`return_freed_memory` fixes
  the threshold (which also stops the raising) so read buffers and request bodies go back once
  answered, and :func:`trim_heap` hands the smaller blocks' free heap pages back
  (``malloc_trim``) once no body is held (router.body_memory).
* **Garbage collection.** A proxied request allocates a few hundred container objects, so
  with CPython's default first-generation threshold (700) the cyclic collector runs every
  couple of requests. Almost all of those objects die by reference counting: the collections
  find next to nothing (1 861 objects in 27 000 proxied requests, ``gc.get_stats``) and cost
  ~8 % of the router's CPU per request (0.185-0.19 against 0.166-0.178 ms per request, wrk
  against a canned upstream, the 2-core dev machine). :func:`collect_less` raises the thresholds:
  the young generation is scanned every :data:`GC_THRESHOLDS` ``[0]`` allocations, at most a
  few MB of young objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import resource

__all__ = [
    "FD_RESERVE",
    "GC_THRESHOLDS",
    "MMAP_THRESHOLD",
    "collect_less",
    "connection_cap",
    "raise_fd_limit",
    "return_freed_memory",
    "trim_heap",
]

log = logging.getLogger("lpu_router.process")

FD_RESERVE = 64
"""Descriptors kept for what is not a client connection or its upstream one: listening
sockets, health and ``/load`` probes, logs, the tokenizer file."""
MMAP_THRESHOLD = 128 * 1024
"""Allocations from this size up are mmapped, so they go back to the system when freed."""
GC_THRESHOLDS = (50_000, 50, 100)
"""``gc.set_threshold`` of the router process (CPython's default: 700, 10, 10)."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(max_connections: int, limit: int) -> int:
    """The client connections a process with ``limit`` descriptors can hold, at most
    ``max_connections``: each may take one upstream connection too, as many refused
    connections may linger while they read their 503 (router.listener), and
    :data:`FD_RESERVE` stay free."""
    return max(1, min(max_connections, (limit - FD_RESERVE) // 3))


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only: musl and others have no mallopt
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def return_freed_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (trim threshold twice that); False
    where the C library is not glibc (nothing is changed)."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, threshold))
    ok = bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)) and ok
    return ok


def trim_heap() -> None:
    """Give free heap pages back to the system (glibc ``malloc_trim(0)``; else nothing).

    It walks the heap: call it once in a while (when the last large body is released), not
    per request."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def collect_less(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Run the cyclic garbage collector less often (see the module docstring)."""
    gc.set_threshold(*thresholds)
