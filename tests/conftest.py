"""Every asyncio test runs on uvloop, the loop production runs on (``router/__main__.py``).

A listener test on asyncio's default loop once passed while the router refused every
connection over its cap with a reset under uvloop: the loop is part of what is tested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}
