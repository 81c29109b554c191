"""One exception base for the whole project; each package subclasses it.

Errors are translated at boundaries with ``raise ... from err``; the hub turns
any ``MohlogError`` into one JSON error shape (see ``server.errors``).
"""

from __future__ import annotations

from typing import Any


class MohlogError(Exception):
    """Base of every error mohlog raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class InvalidInput(MohlogError):
    status = 400
    code = "invalid_input"


class NotFound(MohlogError):
    status = 404
    code = "not_found"


class Unauthorized(MohlogError):
    status = 401
    code = "unauthorized"


class Forbidden(MohlogError):
    status = 403
    code = "forbidden"


class Conflict(MohlogError):
    """The request contradicts the hub's state (revoking the last admin token)."""

    status = 409
    code = "conflict"


class TooLarge(MohlogError):
    status = 413
    code = "too_large"


class Busy(MohlogError):
    """The hub cannot take the batch now (retry later, same Idempotency-Key)."""

    status = 503
    code = "busy"


class StorageFull(MohlogError):
    status = 507
    code = "insufficient_storage"


class CorruptData(MohlogError):
    status = 500
    code = "corrupt_data"
