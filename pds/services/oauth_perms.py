"""Granular atproto OAuth permissions: `repo:`, `blob:`, `rpc:`, `account:`, `identity:`.

Syntax (the atproto permission spec): `resource[:positional][?name=value&...]`, e.g.
`repo:app.bsky.feed.post?action=create`, `repo?collection=a.b.c&collection=d.e.f`,
`blob:image/*`, `rpc:app.bsky.feed.getTimeline?aud=did:web:api.bsky.app%23bsky_appview`,
`account:email?action=manage`, `identity:handle`. A refusal names the scope that was
needed, as the reference's ScopeMissingError does.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from ..errors import Forbidden

RESOURCES = ("repo", "blob", "rpc", "account", "identity")
REPO_ACTIONS = ("create", "update", "delete")
ACCOUNT_ATTRS = ("email", "repo", "status")
IDENTITY_ATTRS = ("handle", "*")


@dataclass(frozen=True)
class Perm:
    resource: str
    values: tuple[str, ...]           # the positional value and its named equivalents
    params: dict[str, tuple[str, ...]]


def parse_perm(scope: str) -> Perm | None:
    """A granular permission, or None when `scope` is not one (or is malformed)."""
    head, _, query = scope.partition("?")
    resource, _, positional = head.partition(":")
    if resource not in RESOURCES:
        return None
    try:
        params = {k: tuple(v) for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
    except ValueError:
        return None
    named = {"repo": "collection", "blob": "accept", "rpc": "lxm", "account": "attr",
             "identity": "attr"}[resource]
    values = ((positional,) if positional else ()) + params.pop(named, ())
    perm = Perm(resource, values, params)
    return perm if _valid(perm) else None


def _valid(p: Perm) -> bool:
    if not p.values:
        return False
    if p.resource == "repo":
        return all(a in REPO_ACTIONS for a in p.params.get("action", ()))
    if p.resource == "blob":
        return all(v.count("/") == 1 for v in p.values)
    if p.resource == "rpc":
        return len(p.params.get("aud", ())) == 1
    if p.resource == "account":
        return all(v in ACCOUNT_ATTRS for v in p.values) and \
            all(a in ("read", "manage") for a in p.params.get("action", ()))
    return all(v in IDENTITY_ATTRS for v in p.values)


def _mime_ok(pattern: str, mime: str) -> bool:
    if pattern in ("*/*", mime):
        return True
    return pattern.endswith("/*") and mime.split("/")[0] == pattern[:-2]


def allows(perms: list[Perm], resource: str, value: str, action: str | None = None,
           aud: str | None = None) -> bool:
    """Whether any permission covers `value` (collection, mime type, method, attribute)
    with `action` (repo, account) or `aud` (rpc)."""
    for p in perms:
        if p.resource != resource:
            continue
        if resource == "repo" and ("*" in p.values or value in p.values) and \
                action in (p.params.get("action") or REPO_ACTIONS):
            return True
        if resource == "blob" and any(_mime_ok(v, value) for v in p.values):
            return True
        if resource == "rpc" and ("*" in p.values or value in p.values) and \
                p.params["aud"][0] in ("*", aud):
            return True
        if resource == "account" and value in p.values and \
                (action == "read" or "manage" in p.params.get("action", ())):
            return True
        if resource == "identity" and ("*" in p.values or value in p.values):
            return True
    return False


def missing(scope: str) -> Forbidden:
    return Forbidden(f'Missing required scope "{scope}"', "ScopeMissingError")


def require(perms: list[Perm], resource: str, value: str, action: str | None = None,
            aud: str | None = None) -> None:
    """Refuse unless allowed; the error names the scope needed."""
    if allows(perms, resource, value, action, aud):
        return
    needed = f"{resource}:{value}"
    if resource in ("repo", "account") and action is not None:
        needed += f"?action={action}"
    elif resource == "rpc":
        needed += f"?aud={aud or '*'}"
    raise missing(needed)
