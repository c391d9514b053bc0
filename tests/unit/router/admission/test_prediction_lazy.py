"""OutputLengthModel computes its quantile only when a decision or the snapshot reads it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.admission import prediction
from router.admission.prediction import OutputLengthModel
from router.admission.settings import PredictionPolicy


@pytest.fixture
def quantiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts numpy quantile computations made by the prediction module."""
    calls: list[int] = []
    real = np.quantile

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prediction.np, "quantile", counting)
    return calls


def test_worst_case_never_computes_a_quantile_a_decision_does_not_read(
        quantiles: list[int]) -> None:
    m = OutputLengthModel(PredictionPolicy.WORST_CASE, 0.9, min_samples=10, refresh_every=16)
    for n in range(1, 1001):
        m.observe(n)
        assert m.reserve_tokens(5000) == 5000
    assert quantiles == []
    assert m.estimate == 949  # read: computed now, from the ring (the last 512) as it is
    assert m.estimate == 949 and len(quantiles) == 1  # and cached until 16 more arrive


def test_learned_refreshes_every_refresh_every_observations(quantiles: list[int]) -> None:
    m = OutputLengthModel(PredictionPolicy.LEARNED, 0.5, min_samples=4, refresh_every=16)
    for n in range(1, 4 + 32 + 1):
        m.observe(n)
    assert len(quantiles) == 3  # at the 4th, 20th and 36th observation
    assert m.reserve_tokens(1000) == m.estimate == 19  # median of 1..36, "higher"
    assert len(quantiles) == 3
