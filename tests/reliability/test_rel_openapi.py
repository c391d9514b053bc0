"""The router's OpenAPI description, and a schemathesis run against a live router on loopback:
no 5xx, statuses, content types, headers and bodies as documented."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from stack import emulator_options, router_config

from lpu_emulator.server import start_emulators
from router.app import build_app
from router.openapi import openapi_document
from router.server import running

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_router() -> Iterator[str]:
    """Emulator + router in a thread of their own (schemathesis' client is synchronous)."""
    started: queue.Queue[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = queue.Queue()

    async def serve() -> None:
        stop = asyncio.Event()
        async with start_emulators(emulator_options(time_scale=0.002)) as backends:
            config = router_config(backends, time_scale=0.002)
            async with running(build_app(config), server=config.server) as url:
                started.put((url, asyncio.get_running_loop(), stop))
                await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    url, loop, stop = started.get(timeout=30)
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_document_is_openapi_31_with_error_shapes() -> None:
    config = router_config(["http://127.0.0.1:1"])
    doc = openapi_document(config)
    assert doc["openapi"] == "3.1.0"
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]) >= {"200", "400", "401", "404", "408", "413", "429", "503"}
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    req = doc["components"]["schemas"]["ChatRequest"]
    assert req["properties"]["model"]["enum"] == list(config.models)
    json.dumps(doc)


def test_router_conforms_to_its_openapi(live_router: str) -> None:
    schema = schemathesis.openapi.from_url(live_router + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 7
    for op in operations:
        examples = 50 if op.method.upper() == "POST" else 5

        @settings(max_examples=examples, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(base_url=live_router, checks=CHECKS, timeout=10)

        run()
