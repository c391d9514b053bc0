"""Emulated deterministic LPU backends serving compiled artifacts behind the OpenAI API."""
