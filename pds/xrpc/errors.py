"""XRPC errors: `{"error": Name, "message": text}` with the status the lexicon gives."""

from __future__ import annotations


class XrpcError(Exception):
    """An error answered to the client as XRPC JSON."""

    def __init__(self, status: int, error: str, message: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message or error)
        self.status = status
        self.error = error
        self.message = message or error
        self.headers = headers or {}


def invalid_request(message: str, error: str = "InvalidRequest") -> XrpcError:
    return XrpcError(400, error, message)


def auth_required(message: str = "Authentication Required",
                  error: str = "AuthenticationRequired") -> XrpcError:
    return XrpcError(401, error, message, {"WWW-Authenticate": 'Bearer realm="pds"'})


def forbidden(message: str = "Forbidden", error: str = "Forbidden") -> XrpcError:
    return XrpcError(403, error, message)


def not_found(message: str, error: str = "NotFound") -> XrpcError:
    return XrpcError(404, error, message)
