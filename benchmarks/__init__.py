"""Load generator, queueing theory, simulator and capacity planner for the LPU router."""
