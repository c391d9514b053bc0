"""The demo stack: emulated backends and the router in one process (``lpu-router demo``, the
benchmarks and the tests). It stands outside both, so that neither imports the other."""
