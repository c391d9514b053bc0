"""API keys: who is calling (a tenant), checked in constant time; the admin key for ``/admin``.

Keys are configured per tenant (``[[tenants]] api_keys``); the router keeps only their SHA-256
digests and compares digests with :func:`hmac.compare_digest`, against every configured key
(no early exit), so timing tells nothing about which prefix matched. With no keys configured
every caller is anonymous and allowed. Keys are never logged and never forwarded (the relay drops
``Authorization``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from lpu_protocol.openai_api import APIError
from router.config import RouterConfig, TenantConfig
from router.errors import Rejection
from router.outcomes import RejectReason

__all__ = ["Auth", "bearer_token"]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _unauthorized(message: str) -> Rejection:
    return Rejection(
        RejectReason.UNAUTHORIZED,
        APIError(401, message, type="invalid_request_error", code="invalid_api_key"),
    )


class Auth:
    def __init__(self, config: RouterConfig) -> None:
        self.enabled = config.auth_enabled
        self._keys = [(d, t) for t in config.tenants for d in t.key_digests]
        self._admin = config.server.admin_key_digest

    def _match(self, token: str | None) -> TenantConfig | None:
        digest = hashlib.sha256((token or "").encode()).digest()
        found: TenantConfig | None = None
        for known, tenant in self._keys:
            if hmac.compare_digest(digest, known) and token:
                found = tenant
        return found

    def tenant(self, headers: Mapping[str, str]) -> TenantConfig | None:
        """The caller's tenant; None when keys are off. Raises a 401 :class:`Rejection`."""
        if not self.enabled:
            return None
        token = bearer_token(headers)
        if token is None:
            raise _unauthorized(
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        tenant = self._match(token)
        if tenant is None:
            raise _unauthorized("Incorrect API key provided.")
        return tenant

    def check_admin(self, headers: Mapping[str, str]) -> None:
        """``/admin/*``: open when no keys at all are configured, else the admin key only.

        Raises a :class:`Rejection`: 401 ``invalid_api_key`` without a valid key, 403
        ``permission_denied`` for a valid tenant key that is not the admin key.
        """
        if self._admin is None and not self.enabled:
            return
        token = bearer_token(headers)
        digest = hashlib.sha256((token or "").encode()).digest()
        if self._admin is not None and token is not None \
                and hmac.compare_digest(digest, self._admin):
            return
        if token is not None and self._match(token) is not None:
            raise Rejection(RejectReason.UNAUTHORIZED, APIError(
                403, "This endpoint needs the admin API key; a tenant's key is not enough.",
                type="invalid_request_error", code="permission_denied"))
        raise _unauthorized("This endpoint needs the admin API key.")
