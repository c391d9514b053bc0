"""Priorities: which class a request is in, and how much of a bucket each class may fill.

Classes, highest first: ``interactive``, ``standard``, ``batch`` (sheddable).

Where a request's class comes from (:func:`resolve_priority`): the tenant (API
key) sets the highest class it may use (``standard`` without a tenant); a
request may ask for a lower one, never a higher one, with the priority header
or with ``service_tier``:

=================  ==============  =====================================================
``service_tier``   class           wait
=================  ==============  =====================================================
absent, ``auto``,  tenant's        fails fast (0 extra wait)
``default``
``on_demand``      tenant's        may wait up to ``on_demand_max_wait_s`` beyond the SLO
``flex``           ``batch``       fails fast: refused first when there is no room
``priority``,      ``interactive`` (capped by the tenant's class)
``performance``
=================  ==============  =====================================================

How much room (the SLO reserve, :class:`~router.admission.settings.PriorityRule`):
a class with ``share`` s may fill ``s`` of the TTFT SLO, of ``max_queue`` and of
``max_concurrency``, and is shed while utilization >= ``target * factor``
(interactive ignores utilization). The rules must be *nested*: a higher class
has a share and a utilization threshold at least those of a lower one.

Why that gives "an interactive request is never refused while sheddable work
could be refused in its place": every check of the decision is a comparison
``load > room(class)`` where the load does not depend on the class and
``room`` grows with the class. So in any state, whatever refuses an interactive
request refuses a batch request of the same shape, and batch requests are
refused from the moment their smaller room is full -- while the room between
``share_batch`` and 1 is still free for interactive traffic. The property test
``test_priority_nesting`` checks the first half on random schedules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import pairwise

from router.admission import Priority
from router.admission.settings import PriorityRule, TenantPolicy

__all__ = [
    "RANK",
    "resolve_priority",
    "rule_errors",
    "rule_table",
    "scaled_cap",
    "utilization_threshold",
]

RANK = {Priority.INTERACTIVE: 0, Priority.STANDARD: 1, Priority.BATCH: 2}
"""Lower is more important."""

_TIER_CLASS = {"flex": Priority.BATCH, "priority": Priority.INTERACTIVE,
               "performance": Priority.INTERACTIVE}


def rule_table(rules: Iterable[PriorityRule]) -> dict[Priority, PriorityRule]:
    """One rule per priority; a missing one gets ``PriorityRule(p)`` (full share)."""
    table = {r.priority: r for r in rules}
    for p in Priority:
        table.setdefault(p, PriorityRule(p))
    return table


def utilization_threshold(rule: PriorityRule, target: float) -> float:
    """Utilization at and above which the class is shed (inf: never)."""
    return math.inf if rule.utilization_factor is None else target * rule.utilization_factor


def scaled_cap(cap: int | None, share: float) -> int | None:
    """The part of a queue or concurrency cap a class may fill."""
    return None if cap is None else math.floor(cap * share + 1e-9)


def rule_errors(rules: Iterable[PriorityRule]) -> list[str]:
    """Every problem with a rule set (empty when valid): ranges, duplicates, nesting."""
    rules = tuple(rules)
    errors: list[str] = []
    seen: set[Priority] = set()
    for r in rules:
        if r.priority in seen:
            errors.append(f"priorities.{r.priority}: given more than once")
        seen.add(r.priority)
        if not 0 < r.share <= 1:
            errors.append(f"priorities.{r.priority}.share: must be in (0, 1], got {r.share}")
        f = r.utilization_factor
        if f is not None and not (math.isfinite(f) and f > 0):
            errors.append(
                f"priorities.{r.priority}.utilization_factor: must be > 0 or absent, got {f}"
            )
    table = rule_table(rules)
    order = sorted(Priority, key=RANK.__getitem__)
    for hi, lo in pairwise(order):
        a, b = table[hi], table[lo]
        if a.share < b.share:
            errors.append(
                f"priorities.{hi}.share ({a.share}) must be >= priorities.{lo}.share ({b.share})"
            )
        if utilization_threshold(a, 1.0) < utilization_threshold(b, 1.0):
            errors.append(
                f"priorities.{hi}.utilization_factor must be >= that of {lo} (or absent)"
            )
    return errors


def resolve_priority(
    tenant: TenantPolicy | None,
    requested: str | None = None,
    service_tier: str | None = None,
    *,
    on_demand_max_wait_s: float = 0.0,
) -> tuple[Priority, float]:
    """The class and extra wait budget (seconds) of one request.

    ``requested`` is the priority header's value (a class name); ``service_tier``
    the body field. Neither can raise the class above the tenant's. Raises
    ValueError for a header value that is not a class name; unknown tiers are
    treated as ``auto``.
    """
    ceiling = tenant.priority if tenant is not None else Priority.STANDARD
    wanted = ceiling
    if requested is not None:
        try:
            wanted = Priority(requested.strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in Priority)
            raise ValueError(f"unknown priority {requested!r} (expected one of {names})") from None
    wait = 0.0
    tier = service_tier.lower() if service_tier is not None else None
    if tier in _TIER_CLASS:
        by_tier = _TIER_CLASS[tier]
        # Header and tier together: the lower of the two.
        wanted = by_tier if requested is None else max(wanted, by_tier, key=RANK.__getitem__)
    elif tier == "on_demand":
        wait = on_demand_max_wait_s
    chosen = wanted if RANK[wanted] >= RANK[ceiling] else ceiling
    return chosen, wait
