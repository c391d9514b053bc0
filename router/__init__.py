"""Admission-control router for deterministic LLM inference backends."""
