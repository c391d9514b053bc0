"""Shared fixtures; every asyncio test runs on uvloop, the loop production runs on.

A listener test on asyncio's default loop once passed while the router refused every
connection over its cap with a reset under uvloop: the loop is part of what is tested.

Fixtures (what they start lives in ``stack.py`` and ``live_processes.py``; everything started
is stopped when the test ends, the last started first):

* ``emulators``: ``await emulators(options, replicas=1)`` serves emulated backends in this
  process, returns their URLs;
* ``router_stack``: ``await router_stack(config)`` serves the real router app for a
  :class:`~router.config.RouterConfig`, returns a :class:`stack.Stack`; ``emulator_router``
  is the default one (one emulator, admission off, bucket ``short``);
* ``fake_backend``: ``await fake_backend(handler)`` serves an aiohttp backend whose completions
  ``handler`` answers, returns a :class:`stack.FakeBackend`;
* ``router_process`` / ``emulator_process``: the same as real processes (``python -m router
  serve CONFIG`` returns a :class:`live_processes.Served`; ``python -m lpu_emulator`` returns
  the URLs);
* ``manual_clock``: a :class:`ManualClock` at 0;
* ``redis_server``: a real ``redis-server`` on a free loopback port for the session
  (:class:`redis_server.RedisServer`), running and emptied for each test that asks; skipped
  when ``redis-server`` is not installed, unless ``LPU_REQUIRE_REDIS=1`` (then a failure).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

__all__ = ["ManualClock"]

if TYPE_CHECKING:
    from live_processes import Served, StartEmulatorProcess, StartRouterProcess
    from redis_server import RedisServer
    from stack import (
        FakeBackend,
        Handler,
        Stack,
        StartEmulators,
        StartFake,
        StartRouter,
    )

    from lpu_emulator.server import EmulatorOptions
    from router.config import RouterConfig

# The support modules are imported inside the fixtures: a unit test of one package must not
# fail to collect because another package (the router, say) is broken.


# Every metric update of the router must run on one thread (router.fast_metrics: its values
# take no lock); under this the values refuse an update from another thread, and
# _metric_threads fails the test that made one. Set before any router module is imported;
# router processes the tests start inherit it.
os.environ["LPU_CHECK_METRIC_THREAD"] = "1"


@pytest.fixture(autouse=True)
def _metric_threads() -> Iterator[None]:
    yield
    fast_metrics = sys.modules.get("router.fast_metrics")
    if fast_metrics is not None and fast_metrics.violations:
        found = list(fast_metrics.violations)
        fast_metrics.violations.clear()
        pytest.fail(f"metric values updated off their thread: {found}")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def _started() -> AsyncIterator[contextlib.AsyncExitStack]:
    """What the factory fixtures of one test started, stopped in reverse order at its end."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest.fixture
def emulators(_started: contextlib.AsyncExitStack) -> StartEmulators:
    from stack import emulator_options

    from lpu_emulator.server import start_emulators

    async def start(options: EmulatorOptions | None = None, replicas: int = 1) -> list[str]:
        return await _started.enter_async_context(
            start_emulators(options or emulator_options(), replicas))
    return start


@pytest.fixture
def router_stack(_started: contextlib.AsyncExitStack) -> StartRouter:
    from stack import serve_router

    async def start(config: RouterConfig) -> Stack:
        return await _started.enter_async_context(serve_router(config))
    return start


@pytest.fixture
async def emulator_router(emulators: StartEmulators, router_stack: StartRouter) -> Stack:
    """One emulator (time scale 0.05) behind the router, admission off."""
    from stack import router_config

    return await router_stack(router_config(await emulators()))


@pytest.fixture
def fake_backend(_started: contextlib.AsyncExitStack) -> StartFake:
    from stack import fake_backend as serve_fake

    async def start(completion: Handler) -> FakeBackend:
        return await _started.enter_async_context(serve_fake(completion))
    return start


@pytest.fixture
def router_process(_started: contextlib.AsyncExitStack) -> StartRouterProcess:
    from live_processes import served_router

    async def start(config: Path, *args: str, **kw: Any) -> Served:
        return await _started.enter_async_context(served_router(config, *args, **kw))
    return start


@pytest.fixture
def emulator_process(_started: contextlib.AsyncExitStack) -> StartEmulatorProcess:
    from live_processes import emulator_process as serve_emulators

    async def start(*args: Any, **kw: Any) -> list[str]:
        return await _started.enter_async_context(serve_emulators(*args, **kw))
    return start


class ManualClock:
    """A clock that moves only when told: ``clock()`` reads it, :meth:`advance` moves it (for
    code that takes ``clock=``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; return the new time."""
        self.t += seconds
        return self.t


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[RedisServer | None]:
    from redis_server import RedisServer, redis_binary

    binary = redis_binary()
    if binary is None:
        yield None
        return
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server(_redis_session: RedisServer | None) -> RedisServer:
    """The session's redis-server, running and empty (a test may stop and start it)."""
    if _redis_session is None:
        if os.environ.get("LPU_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed and LPU_REQUIRE_REDIS=1")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    _redis_session.start()
    _redis_session.flush()
    return _redis_session
