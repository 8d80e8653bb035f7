"""One account as the services see it, and the one place that decides what its status
allows.

`Account` is built from the stored `account.json` record (`store.accounts`). Its `status`
is the stored one: None while the account is active, else `deactivated`, `takendown`,
`suspended` (or `deleted`, which the store never keeps: a deleted account's directory
is gone, and a record saying so is treated as no account at all).

`require(account, use, ...)` is the rule book: whether an account may be used as `use`
says, and the refusal (error and message) each use gets when it may not. Every credential
a request presents (access or refresh token, app password, service-auth JWT) meets it in
one place, `auth.Auth.admit`.

`generation` is a random id an account gets when it is created: the tokens issued to it
carry it, so they open only that account, never a later one of the same DID.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import AuthFailed, InvalidInput, PdsError

DEACTIVATED = "deactivated"
TAKENDOWN = "takendown"
SUSPENDED = "suspended"
DELETED = "deleted"


@dataclass(frozen=True)
class Account:
    """A hosted account (from its account.json)."""

    did: str
    handle: str
    email: str | None = None
    status: str | None = None  # None: active
    password_hash: str | None = None
    created_at: str | None = None
    email_confirmed_at: str | None = None
    invite_code: str | None = None
    invites_disabled: bool = False
    deactivated_at: int | None = None
    delete_after: str | None = None
    takedown_ref: str | None = None
    generation: str | None = None  # None: made before accounts had one (its tokens neither)
    email_auth_factor: bool = False  # sign-in codes mailed on each password login (2FA)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Account:
        """From the stored record (its field names are the lexicons' camelCase)."""
        return cls(did=rec["did"], handle=rec["handle"], email=rec.get("email"),
                   status=rec.get("status"), password_hash=rec.get("passwordHash"),
                   created_at=rec.get("createdAt"),
                   email_confirmed_at=rec.get("emailConfirmedAt"),
                   invite_code=rec.get("inviteCode"),
                   invites_disabled=bool(rec.get("invitesDisabled")),
                   deactivated_at=rec.get("deactivatedAt"),
                   delete_after=rec.get("deleteAfter"),
                   takedown_ref=rec.get("takedownRef"),
                   generation=rec.get("generation"),
                   email_auth_factor=bool(rec.get("emailAuthFactor")))

    @property
    def active(self) -> bool:
        return self.status is None

    @property
    def takendown(self) -> bool:
        return self.status == TAKENDOWN

    @property
    def deactivated(self) -> bool:
        return self.status == DEACTIVATED

    @property
    def deleted(self) -> bool:
        return self.status == DELETED

    def status_fields(self) -> dict[str, Any]:
        """`active` and (when inactive) `status`, as the lexicons give them."""
        return {"active": self.active} | ({"status": self.status} if self.status else {})


def load(ctx: Any, did: str) -> Account | None:
    """The hosted account `did`, or None (blocking: account.json may be read)."""
    rec = ctx.accounts.get(did)
    if rec is None:
        return None
    # The store hands back the same record object while its cache holds it (a change
    # makes a new one), and an Account is frozen: built once per record, not per call
    # (two or three calls a request).
    hit = _BUILT.get(did)
    if hit is not None and hit[0] is rec:
        return hit[1]
    acct = Account.from_record(rec)
    if len(_BUILT) >= _BUILT_MAX:
        _BUILT.clear()
    _BUILT[did] = (rec, acct)
    return acct


_BUILT: dict[str, tuple[dict, Account]] = {}
_BUILT_MAX = 4096


def find(ctx: Any, name: str) -> Account | None:
    """The hosted account a DID or handle names, or None (blocking)."""
    did = name if name.startswith("did:") else ctx.accounts.did_for_handle(name.lower())
    return None if did is None else load(ctx, did)


# --- what each status allows ----------------------------------------------------------------


class Use(Enum):
    """What an account is asked to do, or to have done with it."""

    REPO = "repo"            # named as a repo (DID or handle) by a request: any status
    SYNC = "sync"            # its repo, blocks and blobs served by com.atproto.sync.*
    REPO_STATUS = "status"   # its hosting status reported (getRepoStatus)
    READ = "read"            # its records read through com.atproto.repo.*
    WRITE = "write"          # a commit to its repo
    LOGIN = "login"          # a session opened with its password
    TOKEN = "token"          # an access token of it used
    SERVICE = "service"      # a service-auth JWT it signed, presented to us
    REFRESH = "refresh"      # its session refreshed
    CHANGE_STATUS = "change"  # activated or deactivated by itself
    IMPORT = "import"        # its repo replaced by an importRepo (migrating in)
    MANAGE = "manage"        # looked at or changed by itself or the admin


_SYNC_REFUSALS = {TAKENDOWN: "RepoTakendown", SUSPENDED: "RepoSuspended",
                  DEACTIVATED: "RepoDeactivated"}
_READ_REFUSALS = {TAKENDOWN: "RepoTakendown", DEACTIVATED: "RepoDeactivated"}


def _missing(use: Use, name: str) -> PdsError:
    """The refusal of `use` when there is no such account (`name` as the caller gave it)."""
    if use in (Use.SYNC, Use.REPO_STATUS):
        return InvalidInput(f"Could not find repo for DID: {name}", "RepoNotFound")
    if use in (Use.REPO, Use.READ, Use.WRITE):
        return InvalidInput(f"Could not find repo: {name}", "RepoNotFound")
    if use in (Use.LOGIN, Use.TOKEN, Use.SERVICE):
        return AuthFailed("Account not found", "AccountNotFound")
    return InvalidInput("Account not found", "AccountNotFound")


def refusal(acct: Account, use: Use, privileged: bool = False) -> PdsError | None:
    """Why `acct`'s status forbids `use`, or None when it allows it.

    `privileged` lifts the refusal where the use allows that: a sync read by the admin or
    by the account itself (to migrate out), a login with `allowTakendown`, an access token
    of the takendown scope."""
    status = acct.status
    if status is None:
        return None
    if use is Use.SYNC and not privileged:
        return InvalidInput(f"Repo has been {status}: {acct.did}",
                            _SYNC_REFUSALS.get(status, "RepoNotFound"))
    if use is Use.READ and status in _READ_REFUSALS:
        return InvalidInput(f"Repo has been {status}: {acct.did}", _READ_REFUSALS[status])
    if use is Use.WRITE:
        return InvalidInput(f"Account is {status}", "AccountDeactivated"
                            if status == DEACTIVATED else "AccountTakedown")
    if use in (Use.LOGIN, Use.TOKEN, Use.SERVICE) and status == TAKENDOWN and not privileged:
        return AuthFailed("Account has been taken down", "AccountTakedown")
    if use in (Use.CHANGE_STATUS, Use.IMPORT) and status == TAKENDOWN:
        return InvalidInput("Account has been taken down", "AccountTakedown")
    return None


def require(acct: Account | None, use: Use, name: str = "", *,
            privileged: bool = False) -> Account:
    """`acct` if it exists and may be used as `use` says; else the refusal that use gets.
    `name` is how the caller named the account (DID or handle), for the not-found message;
    `privileged` as in `refusal`."""
    if acct is None or acct.deleted:
        raise _missing(use, name or (acct.did if acct else ""))
    problem = refusal(acct, use, privileged)
    if problem is not None:
        raise problem
    return acct
