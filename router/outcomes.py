"""One outcome vocabulary: metric label, log field and branch taken."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Outcome", "RejectReason"]


class Outcome(StrEnum):
    """How an admitted request ended. Exactly one per admitted request."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RejectReason(StrEnum):
    """Why a request was refused before any backend saw it (or by a backend's deadline)."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    CONTEXT_LENGTH = "context_length"
    MAX_TOKENS_CAP = "max_tokens_cap"
    UNAUTHORIZED = "unauthorized"
    SLO_TTFT = "slo_ttft"
    SLO_E2E = "slo_e2e"
    UTILIZATION = "utilization"
    QUEUE_FULL = "queue_full"
    CONCURRENCY = "concurrency"
    TENANT_RPM = "tenant_rpm"
    TENANT_TPM = "tenant_tpm"
    NO_BACKEND = "no_backend"
    BACKEND_DEADLINE = "backend_deadline"
    SHUTTING_DOWN = "shutting_down"
    BODY_MEMORY = "body_memory"
    """The router already holds ``server.max_body_memory_bytes`` of request bodies."""
    BODY_RATE = "body_rate"
    """Large bodies arrive faster than ``server.large_body_bytes_per_s``."""
    LIMITS_UNAVAILABLE = "limits_unavailable"
    """The shared limits store (Redis) did not answer and ``limits.on_store_error = "closed"``."""
