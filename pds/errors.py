"""Domain errors: what the services and the store refuse, by kind.

A leaf module (it imports nothing from pds), so every layer can raise these. The kind
says what went wrong; `error` optionally names the protocol's error for it where a
lexicon gives one (`AccountNotFound`, `RecordNotFound`, `HandleNotAvailable`,
`ExpiredToken`...). How a kind is answered over HTTP (status, default error name, default
headers) is the XRPC layer's business: one table in `pds.xrpc.errors`.
"""

from __future__ import annotations


class PdsError(Exception):
    """A failure a client (or an operator at the command line) is told about.

    Raise a subclass: the kind decides the answer's status.
    """

    def __init__(self, message: str, error: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error
        self.headers = headers or {}


class InvalidInput(PdsError):
    """The request can't be done as asked: bad input, or a state it conflicts with."""


class InvalidName(InvalidInput, ValueError):
    """A name that can't be one file name of the data dir (over 255 bytes, a separator,
    NUL, not UTF-8...): refused before any path is built from it. Also a ValueError, so
    a lookup that treats a malformed name as "no such thing" goes on doing so."""


class AuthRequired(PdsError):
    """No usable credentials were presented (the answer invites the client to send some)."""


class AuthFailed(AuthRequired):
    """Credentials were presented and refused (wrong password, bad or unknown token)."""


class Forbidden(PdsError):
    """The caller is known but may not do this."""


class PayloadTooLarge(PdsError):
    """The request body is over a limit."""


class RateLimited(PdsError):
    """Too many attempts; `headers` say when to try again."""


class NotSupported(PdsError):
    """A method (or a use of one) this PDS does not implement."""


class OAuthError(InvalidInput):
    """An OAuth 2.0 refusal (400): `error` is its RFC 6749 / RFC 9449 code
    (`invalid_request`, `invalid_grant`, `use_dpop_nonce`...), `message` its description."""


class OAuthUnauthorized(AuthFailed):
    """An OAuth refusal answered 401 (`invalid_dpop_proof`, `invalid_token`,
    `use_dpop_nonce` at a resource), with its `WWW-Authenticate: DPoP ...` header."""


class UpstreamFailure(PdsError):
    """A service this PDS forwarded to could not be reached, or answered unusably."""


class UpstreamTimeout(UpstreamFailure):
    """A service this PDS forwarded to did not answer in time."""
