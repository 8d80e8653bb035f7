"""com.atproto.admin.* (HTTP Basic, user `admin`)."""

from __future__ import annotations

import asyncio

from ..repo.syntax import is_valid_did
from ..services import accounts as svc
from .app import Call
from .errors import invalid_request
from .registry import ADMIN, procedure, query

NS = "com.atproto.admin."


def _did(value: object) -> str:
    if not isinstance(value, str) or not is_valid_did(value):
        raise invalid_request("Invalid did")
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
        raise invalid_request("Account not found", "AccountNotFound")
    return acct


@query(NS + "getAccountInfo", auth=ADMIN)
async def get_account_info(call: Call):
    did = _did(call.param("did", required=True))
    return account_view(call.ctx, _account(call, did))


@query(NS + "getAccountInfos", auth=ADMIN)
async def get_account_infos(call: Call):
    infos = []
    for did in call.param_list("dids"):
        acct = call.ctx.accounts.get(_did(did))
        if acct is not None:
            infos.append(account_view(call.ctx, acct))
    return {"infos": infos}


@query(NS + "searchAccounts", auth=ADMIN)
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
        raise invalid_request("Invalid subject")
    if subject.get("$type") != "com.atproto.admin.defs#repoRef":
        raise invalid_request("Only repo subjects (com.atproto.admin.defs#repoRef) are supported")
    return _did(subject.get("did"))


@query(NS + "getSubjectStatus", auth=ADMIN)
async def get_subject_status(call: Call):
    did = _did(call.param("did", required=True))
    acct = _account(call, did)
    takedown = {"applied": acct.get("status") == "takendown"}
    if acct.get("takedownRef"):
        takedown["ref"] = acct["takedownRef"]
    return {"subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
            "takedown": takedown}


@procedure(NS + "updateSubjectStatus", auth=ADMIN)
async def update_subject_status(call: Call):
    subject = call.field("subject", kind=dict)
    did = _subject_did(subject)
    _account(call, did)
    takedown = call.field("takedown", required=False, kind=dict)
    if takedown is not None:
        applied = takedown.get("applied")
        if not isinstance(applied, bool):
            raise invalid_request("takedown.applied must be a boolean")
        await asyncio.to_thread(call.ctx.lifecycle.takedown, did, applied, takedown.get("ref"))
    return {"subject": subject, "takedown": takedown or {"applied": False}}


@procedure(NS + "deleteAccount", auth=ADMIN)
async def delete_account(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    await call.ctx.lifecycle.delete(did)


@procedure(NS + "updateAccountHandle", auth=ADMIN)
async def update_account_handle(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    handle = svc.normalize_handle_input(call.ctx, call.field("handle"), external_ok=True)
    await call.ctx.lifecycle.update_handle(did, handle)


@procedure(NS + "updateAccountEmail", auth=ADMIN)
async def update_account_email(call: Call):
    account = call.field("account")
    did = account if account.startswith("did:") else call.ctx.accounts.did_for_handle(account)
    if did is None:
        raise invalid_request("Account not found", "AccountNotFound")
    _account(call, did)
    await asyncio.to_thread(call.ctx.lifecycle.set_email, did, call.field("email"))


@procedure(NS + "updateAccountPassword", auth=ADMIN)
async def update_account_password(call: Call):
    did = _did(call.field("did"))
    _account(call, did)
    password = call.field("password")
    if not password or len(password) > 256:
        raise invalid_request("Invalid password")
    await asyncio.to_thread(call.ctx.lifecycle.set_password, did, password)


@query(NS + "getInviteCodes", auth=ADMIN)
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


@procedure(NS + "disableInviteCodes", auth=ADMIN)
async def disable_invite_codes(call: Call):
    codes = call.field("codes", required=False, kind=list) or []
    accounts = call.field("accounts", required=False, kind=list) or []
    svc.disable_invites(call.ctx, codes=codes, accounts=accounts)


@procedure(NS + "disableAccountInvites", auth=ADMIN)
async def disable_account_invites(call: Call):
    did = _did(call.field("account"))
    _account(call, did)
    call.ctx.accounts.update(did, invitesDisabled=True)


@procedure(NS + "enableAccountInvites", auth=ADMIN)
async def enable_account_invites(call: Call):
    did = _did(call.field("account"))
    _account(call, did)
    call.ctx.accounts.update(did, invitesDisabled=False)
