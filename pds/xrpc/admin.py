"""com.atproto.admin.* (HTTP Basic, user `admin`)."""

from __future__ import annotations

import asyncio

from ..errors import InvalidInput
from ..repo.syntax import is_valid_did
from ..services import accounts as svc
from ..services.auth import AuthKind
from .app import Call
from .registry import procedure, query


def _did(value: object) -> str:
    if not isinstance(value, str) or not is_valid_did(value):
        raise InvalidInput("Invalid did")
    return value


def account_view(ctx, acct: dict) -> dict:
    invites = [svc.invite_view(i) for i in ctx.accounts.list_invites()
               if i.get("forAccount") == acct["did"]]
    out = {"did": acct["did"], "handle": acct["handle"], "indexedAt": acct["createdAt"],
           "invitesDisabled": bool(acct.get("invitesDisabled")), "invites": invites}
    if acct.get("email"):
        out["email"] = acct["email"]
    if acct.get("emailConfirmedAt"):
        out["emailConfirmedAt"] = acct["emailConfirmedAt"]
    if acct.get("inviteCode"):
        out["invitedBy"] = {"code": acct["inviteCode"]}
    if acct.get("deactivatedAt"):
        out["deactivatedAt"] = acct["deactivatedAt"]
    return out


def _account(call: Call, did: str) -> dict:
    acct = call.ctx.accounts.get(did)
    if acct is None:
        raise InvalidInput("Account not found", "AccountNotFound")
    return acct


@query("com.atproto.admin.getAccountInfo", auth=AuthKind.ADMIN)
async def get_account_info(call: Call):
    did = _did(call.param("did", required=True))
    return account_view(call.ctx, _account(call, did))


@query("com.atproto.admin.getAccountInfos", auth=AuthKind.ADMIN)
async def get_account_infos(call: Call):
    infos = []
    for did in call.param_list("dids"):
        acct = call.ctx.accounts.get(_did(did))
        if acct is not None:
            infos.append(account_view(call.ctx, acct))
    return {"infos": infos}


@query("com.atproto.admin.searchAccounts", auth=AuthKind.ADMIN)
async def search_accounts(call: Call):
    email = (call.param("email") or "").lower()
    limit = call.param_int("limit", 50, 1, 100)
    cursor = call.param("cursor")
    out = []
    for did in call.ctx.accounts.list_dids():
        if cursor and did <= cursor:
            continue
        acct = call.ctx.accounts.get(did)
        if acct and (not email or email in (acct.get("email") or "").lower()):
            out.append(account_view(call.ctx, acct))
            if len(out) >= limit:
                break
    res = {"accounts": out}
    if len(out) == limit:
        res["cursor"] = out[-1]["did"]
    return res


def _subject_did(subject: object) -> str:
    if not isinstance(subject, dict):
        raise InvalidInput("Invalid subject")
    if subject.get("$type") != "com.atproto.admin.defs#repoRef":
        raise InvalidInput("Only repo subjects (com.atproto.admin.defs#repoRef) are supported")
    return _did(subject.get("did"))


@query("com.atproto.admin.getSubjectStatus", auth=AuthKind.ADMIN)
async def get_subject_status(call: Call):
    did = _did(call.param("did", required=True))
    acct = _account(call, did)
    takedown = {"applied": acct.get("status") == "takendown"}
    if acct.get("takedownRef"):
        takedown["ref"] = acct["takedownRef"]
    return {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
            "takedown": takedown}


@procedure("com.atproto.admin.updateSubjectStatus", auth=AuthKind.ADMIN)
async def update_subject_status(call: Call):
    subject = call.field("subject", kind=dict)
    did = _subject_did(subject)
    _account(call, did)
    takedown = call.field("takedown", required=False, kind=dict)
    if takedown is not None:
        applied = takedown.get("applied")
        if not isinstance(applied, bool):
            raise InvalidInput("takedown.applied must be a boolean")
        await asyncio.to_thread(call.ctx.lifecycle.takedown, did, applied, takedown.get("ref"))
    return {"subject": subject, "takedown": takedown or {"applied": False}}


@procedure("com.atproto.admin.deleteAccount", auth=AuthKind.ADMIN)
async def delete_account(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    await call.ctx.lifecycle.delete(did)


@procedure("com.atproto.admin.updateAccountHandle", auth=AuthKind.ADMIN)
async def update_account_handle(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    handle = svc.normalize_handle_input(call.ctx, call.field("handle"), external_ok=True)
    await call.ctx.lifecycle.update_handle(did, handle)


@procedure("com.atproto.admin.updateAccountEmail", auth=AuthKind.ADMIN)
async def update_account_email(call: Call):
    account = call.field("account")
    did = account if account.startswith("did:") else call.ctx.accounts.did_for_handle(account)
    if did is None:
        raise InvalidInput("Account not found", "AccountNotFound")
    _account(call, did)
    await asyncio.to_thread(call.ctx.lifecycle.set_email, did, call.field("email"))


@procedure("com.atproto.admin.updateAccountPassword", auth=AuthKind.ADMIN)
async def update_account_password(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    password = call.field("password")
    if not password or len(password) > 256:
        raise InvalidInput("Invalid password")
    await asyncio.to_thread(call.ctx.lifecycle.set_password, did, password)


@query("com.atproto.admin.getInviteCodes", auth=AuthKind.ADMIN)
async def get_invite_codes(call: Call):
    limit = call.param_int("limit", 100, 1, 500)
    cursor = call.param("cursor")
    codes = sorted(call.ctx.accounts.list_invites(), key=lambda i: i["code"])
    if cursor:
        codes = [c for c in codes if c["code"] > cursor]
    codes = codes[:limit]
    out = {"codes": [svc.invite_view(c) for c in codes]}
    if len(codes) == limit:
        out["cursor"] = codes[-1]["code"]
    return out


@procedure("com.atproto.admin.disableInviteCodes", auth=AuthKind.ADMIN)
async def disable_invite_codes(call: Call):
    codes = call.field("codes", required=False, kind=list) or []
    accounts = call.field("accounts", required=False, kind=list) or []
    svc.disable_invites(call.ctx, codes=codes, accounts=accounts)


@procedure("com.atproto.admin.disableAccountInvites", auth=AuthKind.ADMIN)
async def disable_account_invites(call: Call):
    did = _did(call.field("account"))
    _account(call, did)
    call.ctx.accounts.update(did, invitesDisabled=True)


@procedure("com.atproto.admin.enableAccountInvites", auth=AuthKind.ADMIN)
async def enable_account_invites(call: Call):
    did = _did(call.field("account"))
    _account(call, did)
    call.ctx.accounts.update(did, invitesDisabled=False)
