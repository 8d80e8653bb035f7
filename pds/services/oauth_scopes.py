"""OAuth scopes: which asked scopes are granted, what they say in plain words, and
which XRPC methods an OAuth token may call.

The transition scopes, as the reference enforces them: `atproto` alone identifies the
account and lets the app read what needs no permission; `transition:generic` acts like
an app password (everything but account management: the privileged methods);
`transition:chat.bsky` adds the chat service; `transition:email` lets the app see the
account's email address. A method outside the grant answers 403 `ScopeMissingError`.
"""

from __future__ import annotations

from ..errors import Forbidden, OAuthError

ATPROTO = "atproto"
GENERIC = "transition:generic"
CHAT = "transition:chat.bsky"
EMAIL = "transition:email"
SUPPORTED = (ATPROTO, GENERIC, CHAT, EMAIL)
MAX_SCOPE = 2048

PLAIN_WORDS = {
    ATPROTO: "Know who you are on the network (your handle and DID)",
    GENERIC: "Read and write your posts, likes, follows, blocks, pictures and other "
             "records, and act for you in apps (not your password or account settings)",
    CHAT: "Read and send your direct messages",
    EMAIL: "See your email address",
}

# Methods an `atproto`-only token may call: who am I, and reading what needs no grant.
_IDENTIFY_ONLY = {
    "com.atproto.server.getSession",
}


def parse(scope: object, allowed: str) -> str:
    """The scope a request asks for, held to what its client declared (`allowed`) and
    what this server knows; `invalid_scope` otherwise."""
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE:
        raise OAuthError("scope must be a string", "invalid_scope")
    asked = scope.split()
    if ATPROTO not in asked:
        raise OAuthError('the "atproto" scope is required', "invalid_scope")
    declared = set(allowed.split())
    for s in asked:
        if s not in SUPPORTED:
            raise OAuthError(f"scope {s!r} is not supported", "invalid_scope")
        if s not in declared:
            raise OAuthError(f"scope {s!r} is not in the client's metadata", "invalid_scope")
    return " ".join(dict.fromkeys(asked))


def describe(scope: str) -> list[str]:
    """What a grant lets the app do, one plain sentence each."""
    return [PLAIN_WORDS[s] for s in scope.split() if s in PLAIN_WORDS]


def require(scope: str, nsid: str, privileged: bool) -> None:
    """Refuse `nsid` to an OAuth token granted `scope` when the grant doesn't cover it.

    `privileged`: the method is one an app password may not call (account management)."""
    granted = set(scope.split())
    if nsid.startswith("chat.bsky."):
        needed = CHAT
    elif privileged:
        # Account management stays with the account's own password session.
        raise Forbidden(f'Missing required scope "account:*" for {nsid}', "ScopeMissingError")
    elif nsid in _IDENTIFY_ONLY:
        return
    else:
        needed = GENERIC
    if needed not in granted:
        raise Forbidden(f'Missing required scope "{needed}"', "ScopeMissingError")
