"""How long a slot is reserved for: the output length the model will decide.

The router cannot know how many tokens a request will make, only its allowance
``max_tokens``. Two policies (:class:`~router.admission.settings.PredictionPolicy`):

* ``worst_case``: reserve ``service_time(max_tokens)``. Never under-estimates the
  wait of later requests, so admitted requests meet their SLO; but when most
  requests stop early, predicted waits are too long and requests that would have
  fitted are refused (a completion corrects the timeline, too late for them).
* ``learned``: reserve ``service_time(min(max_tokens, q))`` where ``q`` is the
  ``learned_quantile`` of the completion lengths seen in the bucket. Far fewer
  false refusals when outputs are short; a request that runs longer than ``q``
  delays the ones behind it, and the backend's deadline check (which refuses at
  once what it cannot start in time) catches what that makes late.

Completions that hit their allowance are censored samples (the model might
have gone on); counting them at their allowance biases ``q`` low only when
allowances are below the bucket's natural lengths.

The estimator is a ring of the last ``capacity`` lengths. With ``learned`` the
quantile is recomputed every ``refresh_every`` observations (numpy), so an
observation costs O(1) amortized and a decision reads a cached integer. With
``worst_case`` no decision reads it: it is computed only when :attr:`estimate` is
read (the admin snapshot), from the ring as it is then.
"""

from __future__ import annotations

import math

import numpy as np

from router.admission.settings import PredictionPolicy

__all__ = ["OutputLengthModel"]


class OutputLengthModel:
    """Completion lengths of one bucket and the tokens to reserve for a new request."""

    def __init__(
        self,
        policy: PredictionPolicy,
        quantile: float,
        min_samples: int,
        *,
        capacity: int = 512,
        refresh_every: int = 16,
    ) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.policy = policy
        self._learned = policy is PredictionPolicy.LEARNED
        """Only learned decisions read the quantile (a bool: an enum member costs a lookup)."""
        self.quantile = quantile
        self.min_samples = max(1, min_samples)
        self._ring = np.zeros(max(capacity, self.min_samples), dtype=np.int64)
        self._count = 0
        self._since_refresh = 0
        self._refresh_every = max(1, refresh_every)
        self._estimate: int | None = None

    @property
    def estimate(self) -> int | None:
        """The learned quantile in tokens; None until ``min_samples`` were seen."""
        self._refresh_if_due()
        return self._estimate

    @property
    def samples(self) -> int:
        return min(self._count, len(self._ring))

    def observe(self, completion_tokens: int) -> None:
        """A request completed with ``completion_tokens`` output tokens."""
        self._ring[self._count % len(self._ring)] = max(1, completion_tokens)
        self._count += 1
        self._since_refresh += 1
        if self._learned:
            self._refresh_if_due()

    def _refresh_if_due(self) -> None:
        n = self.samples
        if n >= self.min_samples and (
            self._estimate is None or self._since_refresh >= self._refresh_every
        ):
            q = np.quantile(self._ring[:n], self.quantile, method="higher")
            self._estimate = math.ceil(float(q))
            self._since_refresh = 0

    def reserve_tokens(self, max_tokens: int) -> int:
        """Output tokens to reserve a slot for, never above ``max_tokens``."""
        if self._learned and self._estimate is not None:
            return min(max_tokens, self._estimate)
        return max_tokens
