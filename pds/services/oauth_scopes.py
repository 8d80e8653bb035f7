"""OAuth scopes: which asked scopes are granted, what they say in plain words, and
which XRPC methods an OAuth token may call.

The transition scopes, as the reference enforces them: `atproto` alone identifies the
account and lets the app read what needs no permission; `transition:generic` acts like
an app password (everything but account management: the privileged methods);
`transition:chat.bsky` adds the chat service; `transition:email` lets the app see the
account's email address. A method outside the grant answers 403 `ScopeMissingError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import OAuthError
from . import oauth_perms as P

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
        if s not in SUPPORTED and P.parse_perm(s) is None:
            raise OAuthError(f"scope {s!r} is not supported", "invalid_scope")
        if s not in declared:
            raise OAuthError(f"scope {s!r} is not in the client's metadata", "invalid_scope")
    return " ".join(dict.fromkeys(asked))


def describe(scope: str) -> list[str]:
    """What a grant lets the app do, one plain sentence each."""
    out = []
    for s in scope.split():
        if s in PLAIN_WORDS:
            out.append(PLAIN_WORDS[s])
        else:
            p = P.parse_perm(s)
            if p is not None:
                out.append(_plain(p))
    return out


def _plain(p: P.Perm) -> str:
    what = ", ".join(p.values).replace("*", "any")
    actions = p.params.get("action", ())
    if p.resource == "repo":
        return f"Create, change or delete your records of kind: {what}" + (
            f" ({', '.join(actions)} only)" if actions else "")
    if p.resource == "blob":
        return f"Upload files of type: {what}"
    if p.resource == "rpc":
        aud = p.params.get("aud", ("*",))[0]
        return f"Call {what} for you at {'any service' if aud == '*' else aud}"
    if p.resource == "account":
        return f"{'Change' if 'manage' in actions else 'See'} your account's {what}"
    return f"Change your {'handle' if what == 'handle' else 'identity'}"


# Methods checked against a granular permission other than rpc: (resource, value, action).
_METHODS = {
    "com.atproto.repo.uploadBlob": ("blob", "", None),
    "com.atproto.identity.updateHandle": ("identity", "handle", None),
    "com.atproto.identity.requestPlcOperationSignature": ("identity", "*", None),
    "com.atproto.identity.signPlcOperation": ("identity", "*", None),
    "com.atproto.identity.submitPlcOperation": ("identity", "*", None),
    "com.atproto.server.requestEmailUpdate": ("account", "email", "manage"),
    "com.atproto.server.updateEmail": ("account", "email", "manage"),
    "com.atproto.server.requestEmailConfirmation": ("account", "email", "manage"),
    "com.atproto.server.confirmEmail": ("account", "email", "manage"),
    "com.atproto.server.activateAccount": ("account", "status", "manage"),
    "com.atproto.server.deactivateAccount": ("account", "status", "manage"),
}
_REPO_WRITES = {"com.atproto.repo.createRecord": ("create",),
                "com.atproto.repo.putRecord": ("create", "update"),
                "com.atproto.repo.deleteRecord": ("delete",),
                "com.atproto.repo.applyWrites": ()}
_WRITE_ACTIONS = {"com.atproto.repo.applyWrites#create": "create",
                  "com.atproto.repo.applyWrites#update": "update",
                  "com.atproto.repo.applyWrites#delete": "delete"}

InputCheck = Callable[[Any], None]


def require(scope: str, nsid: str, privileged: bool, content_type: str = "",
            proxy: str | None = None) -> InputCheck | None:
    """Refuse `nsid` to an OAuth token granted `scope` when the grant doesn't cover it
    (403 ScopeMissingError naming the scope needed). `privileged`: a method an app
    password may not call (account management). A repo write is checked against its
    input: the returned function takes the parsed body."""
    granted = set(scope.split())
    perms = [p for p in map(P.parse_perm, granted) if p is not None]
    if nsid in _IDENTIFY_ONLY:
        return None
    if nsid.startswith("chat.bsky.") and CHAT in granted:
        return None
    if GENERIC in granted and not privileged and not nsid.startswith("chat.bsky."):
        return None
    if nsid in _REPO_WRITES:
        return lambda body: _check_writes(perms, nsid, body)
    if nsid in _METHODS:
        resource, value, action = _METHODS[nsid]
        P.require(perms, resource, value or content_type.split(";")[0].strip().lower(),
                  action)
        return None
    if privileged:
        # Account management stays with the account's own password session.
        raise P.missing("account:repo?action=manage")
    P.require(perms, "rpc", nsid, aud=proxy)
    return None


def _check_writes(perms: list[P.Perm], nsid: str, body: Any) -> None:
    """A repo write's collections and actions against the grant."""
    if not isinstance(body, dict):
        return  # the handler refuses a body without the fields
    if nsid != "com.atproto.repo.applyWrites":
        for action in _REPO_WRITES[nsid]:
            P.require(perms, "repo", str(body.get("collection")), action)
        return
    writes = body.get("writes")
    for w in writes if isinstance(writes, list) else []:
        if isinstance(w, dict):
            P.require(perms, "repo", str(w.get("collection")),
                      _WRITE_ACTIONS.get(str(w.get("$type")), "create"))
