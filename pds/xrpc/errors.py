"""XRPC errors: `{"error": Name, "message": text}` with the status the lexicon gives.

Every failure a client is told about is a `pds.errors.PdsError`; `ERRORS` is the one
table of how each kind is answered: its HTTP status, the error name it gets when it names
none itself, and headers it always carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import (
    AuthFailed,
    AuthRequired,
    Forbidden,
    InvalidInput,
    InvalidName,
    NotSupported,
    OAuthError,
    OAuthUnauthorized,
    PayloadTooLarge,
    PdsError,
    RateLimited,
    UpstreamFailure,
    UpstreamTimeout,
)

# --- kinds only the XRPC layer itself raises ------------------------------------------


class MethodNotAllowed(PdsError):
    """The method exists but not with this HTTP verb (e.g. a POST to a subscription)."""


class UpgradeRequired(PdsError):
    """A subscription asked for over plain HTTP: it needs a WebSocket."""


# --- the table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    error: str  # the XRPC error name, unless the exception names its own
    headers: dict[str, str] = field(default_factory=dict)


ERRORS: dict[type[PdsError], Answer] = {
    InvalidInput: Answer(400, "InvalidRequest"),
    InvalidName: Answer(400, "InvalidRequest"),
    AuthRequired: Answer(401, "AuthenticationRequired",
                         {"WWW-Authenticate": 'Bearer realm="pds"'}),
    AuthFailed: Answer(401, "AuthenticationRequired"),
    OAuthError: Answer(400, "invalid_request"),
    OAuthUnauthorized: Answer(401, "invalid_token"),
    Forbidden: Answer(403, "Forbidden"),
    MethodNotAllowed: Answer(405, "InvalidRequest"),
    PayloadTooLarge: Answer(413, "PayloadTooLarge"),
    UpgradeRequired: Answer(426, "InvalidRequest"),
    RateLimited: Answer(429, "RateLimitExceeded"),
    NotSupported: Answer(501, "MethodNotImplemented"),
    UpstreamFailure: Answer(502, "UpstreamFailure"),
    UpstreamTimeout: Answer(504, "UpstreamTimeout"),
}

INTERNAL = Answer(500, "InternalServerError")


def answer_for(kind: type[PdsError]) -> Answer:
    """The table's row for an error class (its nearest listed ancestor); a bare PdsError,
    which names no kind, is an internal error."""
    for cls in kind.__mro__:
        row = ERRORS.get(cls)
        if row is not None:
            return row
    return INTERNAL


def render(ex: PdsError) -> tuple[int, str, str, dict[str, str]]:
    """(status, error name, message, headers) of the answer to `ex`."""
    row = answer_for(type(ex))
    if row is INTERNAL:
        return 500, INTERNAL.error, "Internal Server Error", {}
    name = ex.error or row.error
    return row.status, name, ex.message or name, {**row.headers, **ex.headers}


def error_name(ex: PdsError) -> str:
    """The XRPC error name `ex` is answered with."""
    return render(ex)[1]
