"""``lpu-bench overhead``: the router's cost per request against a reference relay and nginx.

Modules: :mod:`~benchmarks.overhead.command` (the subcommand and the run),
:mod:`~benchmarks.overhead.canned_upstream` (the nearly free upstream),
:mod:`~benchmarks.overhead.relay_reference` (the 25-line aiohttp relay),
:mod:`~benchmarks.overhead.proxies` (starting each process), :mod:`~benchmarks.overhead.load`
(wrk or the Python client) and :mod:`~benchmarks.overhead.report` (ratios and verdicts).
"""
