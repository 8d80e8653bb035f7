"""What com.atproto.admin.* shows and does: account views, searches, subject (takedown)
status, invite listings, and account changes on the admin's behalf.

Coroutines; their file work runs in worker threads.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput
from ..repo.codec import cid_str
from . import accounts as acc
from .account import Account, Use, find, load, require
from .blobs import blob_store
from .context import AppContext
from .pagination import Page, paginate
from .threads import blocking

REPO_REF = "com.atproto.admin.defs#repoRef"
BLOB_REF = "com.atproto.admin.defs#repoBlobRef"
STRONG_REF = "com.atproto.repo.strongRef"


class Invites:
    """Every invite code's view, by the account it belongs to and by code."""

    def __init__(self, ctx: AppContext | None = None) -> None:
        self.by_account: dict[str, list[dict]] = {}
        self.by_code: dict[str, dict] = {}
        for invite in ctx.accounts.list_invites() if ctx is not None else ():
            view = acc.invite_view(invite)
            self.by_account.setdefault(invite.get("forAccount") or "", []).append(view)
            self.by_code[view["code"]] = view


def account_view(acct: Account, invites: Invites) -> dict:
    """com.atproto.admin.defs#accountView."""
    out: dict[str, Any] = {"did": acct.did, "handle": acct.handle,
                           "indexedAt": acct.created_at,
                           "invitesDisabled": acct.invites_disabled,
                           "invites": invites.by_account.get(acct.did, [])}
    if acct.email:
        out["email"] = acct.email
    if acct.email_confirmed_at:
        out["emailConfirmedAt"] = acct.email_confirmed_at
    used = invites.by_code.get(acct.invite_code or "")
    if used is not None:  # the code it signed up with (an #inviteCode view)
        out["invitedBy"] = used
    if acct.deactivated_at:
        out["deactivatedAt"] = acct.deactivated_at
    return out


def _account_info(ctx: AppContext, did: str) -> dict:
    acct = require(load(ctx, did), Use.MANAGE, did)
    return account_view(acct, Invites(ctx))


async def account_info(ctx: AppContext, did: str) -> dict:
    """getAccountInfo."""
    return await blocking(_account_info, ctx, did)


def _account_infos(ctx: AppContext, dids: list[str]) -> list[dict]:
    found = [a for a in (load(ctx, did) for did in dids) if a is not None]
    invites = Invites(ctx) if found else Invites()
    return [account_view(a, invites) for a in found]


async def account_infos(ctx: AppContext, dids: list[str]) -> list[dict]:
    """getAccountInfos: views of the accounts that exist, in the order asked."""
    return await blocking(_account_infos, ctx, dids)


def _search(ctx: AppContext, email: str, limit: int, cursor: str | None) -> Page[dict]:
    def match(did: str) -> Account | None:
        a = load(ctx, did)
        return a if a and (not email or email in (a.email or "").lower()) else None

    page = paginate(ctx.accounts.list_dids(), limit, cursor, load=match)
    invites = Invites(ctx) if page.items else Invites()
    return Page([account_view(a, invites) for a in page.items], page.cursor)


async def search_accounts(ctx: AppContext, email: str, limit: int,
                          cursor: str | None) -> Page[dict]:
    """searchAccounts: accounts whose email contains `email` (any, when empty), by DID."""
    return await blocking(_search, ctx, email.lower(), limit, cursor)


def _repo_status(ctx: AppContext, did: str) -> dict:
    acct = require(load(ctx, did), Use.MANAGE, did)
    takedown: dict[str, Any] = {"applied": acct.takendown}
    if acct.takedown_ref:
        takedown["ref"] = acct.takedown_ref
    return {"subject": {"$type": REPO_REF, "did": did}, "takedown": takedown}


def _not_found() -> InvalidInput:
    return InvalidInput("Subject not found", "NotFound")


def _blob_status(ctx: AppContext, did: str, cid: str) -> dict:
    require(load(ctx, did), Use.MANAGE, did)
    if not blob_store(ctx, did).has(cid):
        raise _not_found()
    # Blobs are taken down with their account, never one by one: never applied here.
    return {"subject": {"$type": BLOB_REF, "did": did, "cid": cid},
            "takedown": {"applied": False}}


def _record_status(ctx: AppContext, uri: str) -> dict:
    did, _, path = uri.removeprefix("at://").partition("/")
    acct = require(find(ctx, did), Use.MANAGE, did)
    found = ctx.repo(acct.did).get_record(path) if path.count("/") == 1 else None
    if found is None:
        raise _not_found()
    # Records are taken down with their account, never one by one: never applied here.
    return {"subject": {"$type": STRONG_REF, "uri": f"at://{acct.did}/{path}",
                        "cid": cid_str(found[0])}, "takedown": {"applied": False}}


def _subject_status(ctx: AppContext, did: str | None, uri: str | None,
                    blob: str | None) -> dict:
    if blob is not None:
        if did is None:
            raise InvalidInput("Must provide a did to request blob state")
        return _blob_status(ctx, did, blob)
    if uri is not None:
        return _record_status(ctx, uri)
    if did is not None:
        return _repo_status(ctx, did)
    raise InvalidInput("No provided subject")


async def subject_status(ctx: AppContext, did: str | None, uri: str | None = None,
                         blob: str | None = None) -> dict:
    """getSubjectStatus of a blob (with its account's `did`), a record (`uri`) or an
    account (`did`), as the reference answers it; NotFound when there is no such one."""
    return await blocking(_subject_status, ctx, did, uri, blob)


async def takedown(ctx: AppContext, did: str, applied: bool | None,
                   ref: str | None = None) -> None:
    """updateSubjectStatus of a repo subject: take it down or restore it (with no
    `applied`, only check the account exists)."""
    if applied is None:
        await blocking(lambda: require(load(ctx, did), Use.MANAGE, did))
        return
    await blocking(ctx.lifecycle.takedown, did, applied, ref)


async def delete_account(ctx: AppContext, did: str) -> None:
    await ctx.lifecycle.delete(did)


async def update_handle(ctx: AppContext, did: str, handle: Any) -> None:
    """updateAccountHandle: the handle rules hold for the admin too, but for the names
    reserved for the PDS's users' sake (the service's own host name stays refused)."""
    await ctx.lifecycle.update_handle(did, handle, by_admin=True)


def _set_email(ctx: AppContext, account: str, email: str) -> None:
    acct = require(find(ctx, account), Use.MANAGE, account)
    ctx.lifecycle.set_email(acct.did, email)


async def update_email(ctx: AppContext, account: str, email: str) -> None:
    """updateAccountEmail of the account a DID or handle names."""
    await blocking(_set_email, ctx, account, email)


async def update_password(ctx: AppContext, did: str, password: str) -> None:
    await blocking(ctx.lifecycle.set_password, did, password)


# An admin's mail: a subject is one header line; the text is what the body limit lets in.
MAX_SUBJECT = 300
DEFAULT_SUBJECT = "Message via your PDS"  # the reference's


def _send_email(ctx: AppContext, did: str, content: str, subject: str) -> str:
    acct = load(ctx, did)  # deactivated and taken-down accounts get mail too
    if acct is None:
        raise InvalidInput("Recipient not found")
    if not acct.email:
        raise InvalidInput("account does not have an email address")
    return ctx.mailer.spool(acct.email, subject, content)


async def send_email(ctx: AppContext, did: str, content: str, subject: str | None) -> None:
    """sendEmail: the admin's plain-text message to an account's address, spooled
    (durable on return; delivered, and retried, by the mailer)."""
    subject = subject or DEFAULT_SUBJECT
    if len(subject) > MAX_SUBJECT or not subject.isprintable():
        raise InvalidInput("subject must be one printable line")
    if not content.strip():
        raise InvalidInput("content is empty")
    await blocking(_send_email, ctx, did, content, subject)


def _invite_codes(ctx: AppContext, limit: int, cursor: str | None) -> Page[dict]:
    codes = sorted(ctx.accounts.list_invites(), key=lambda i: i["code"])
    page: Page[dict] = paginate(codes, limit, cursor, key=lambda i: i["code"])
    return Page([acc.invite_view(i) for i in page.items], page.cursor)


async def invite_codes(ctx: AppContext, limit: int, cursor: str | None) -> Page[dict]:
    """getInviteCodes: every invite code, by code."""
    return await blocking(_invite_codes, ctx, limit, cursor)


async def disable_invite_codes(ctx: AppContext, codes: list[str], accounts: list[str]) -> None:
    await blocking(acc.disable_invites, ctx, codes, accounts)


async def set_account_invites(ctx: AppContext, did: str, enabled: bool) -> None:
    """enableAccountInvites/disableAccountInvites."""
    await blocking(acc.set_invites_disabled, ctx, did, not enabled)


def subject_did(subject: Any) -> str:
    """The DID of an updateSubjectStatus subject (only repo subjects are supported)."""
    if not isinstance(subject, dict):
        raise InvalidInput("Invalid subject")
    if subject.get("$type") != REPO_REF:
        raise InvalidInput("Only repo subjects (com.atproto.admin.defs#repoRef) are supported")
    did = subject.get("did")
    if not isinstance(did, str):
        raise InvalidInput("Invalid subject: did must be a string")
    return did
