"""com.atproto.admin.* (HTTP Basic, user `admin`)."""

from __future__ import annotations

from ..errors import InvalidInput
from ..repo.syntax import is_valid_did
from ..services import admin as svc
from ..services.auth import AuthKind
from .app import Answer, Call
from .registry import procedure, query


def _did(value: object) -> str:
    if not isinstance(value, str) or not is_valid_did(value):
        raise InvalidInput("Invalid did")
    return value


@query("com.atproto.admin.getAccountInfo", auth=AuthKind.ADMIN)
async def get_account_info(call: Call) -> Answer:
    # (a DID: the lexicon's format for every `did` and `account` here, checked before)
    return await svc.account_info(call.ctx, call.param("did", required=True))


@query("com.atproto.admin.getAccountInfos", auth=AuthKind.ADMIN)
async def get_account_infos(call: Call) -> Answer:
    dids = call.param_list("dids")
    return {"infos": await svc.account_infos(call.ctx, dids)}


@query("com.atproto.admin.searchAccounts", auth=AuthKind.ADMIN)
async def search_accounts(call: Call) -> Answer:
    email = call.param("email") or ""
    limit = call.param_int("limit", 50, 1, 100)
    page = await svc.search_accounts(call.ctx, email, limit, call.param("cursor"))
    return page.answer("accounts")


@query("com.atproto.admin.getSubjectStatus", auth=AuthKind.ADMIN)
async def get_subject_status(call: Call) -> Answer:
    # (their formats are the lexicon's, checked before this runs)
    return await svc.subject_status(call.ctx, call.param("did"), call.param("uri"),
                                    call.param("blob"))


@procedure("com.atproto.admin.updateSubjectStatus", auth=AuthKind.ADMIN)
async def update_subject_status(call: Call) -> Answer:
    subject = call.field("subject", kind=dict)
    did = _did(svc.subject_did(subject))
    takedown = call.field("takedown", required=False, kind=dict)
    call.field("deactivated", required=False, kind=dict)  # checked; not supported yet
    applied = None
    if takedown is not None:
        applied = takedown.get("applied")
        if not isinstance(applied, bool):
            raise InvalidInput("takedown.applied must be a boolean")
    await svc.takedown(call.ctx, did, applied, (takedown or {}).get("ref"))
    return {"subject": subject, "takedown": takedown or {"applied": False}}


@procedure("com.atproto.admin.deleteAccount", auth=AuthKind.ADMIN)
async def delete_account(call: Call) -> Answer:
    await svc.delete_account(call.ctx, call.body["did"])
    return None


@procedure("com.atproto.admin.updateAccountHandle", auth=AuthKind.ADMIN)
async def update_account_handle(call: Call) -> Answer:
    await svc.update_handle(call.ctx, call.body["did"], call.body["handle"])
    return None


@procedure("com.atproto.admin.updateAccountEmail", auth=AuthKind.ADMIN)
async def update_account_email(call: Call) -> Answer:
    await svc.update_email(call.ctx, call.field("account"), call.field("email"))
    return None


@procedure("com.atproto.admin.updateAccountPassword", auth=AuthKind.ADMIN)
async def update_account_password(call: Call) -> Answer:
    did, password = call.body["did"], call.body["password"]
    if not password or len(password) > 256:
        raise InvalidInput("Invalid password")
    await svc.update_password(call.ctx, did, password)
    return None


@query("com.atproto.admin.getInviteCodes", auth=AuthKind.ADMIN)
async def get_invite_codes(call: Call) -> Answer:
    limit = call.param_int("limit", 100, 1, 500)
    page = await svc.invite_codes(call.ctx, limit, call.param("cursor"))
    return page.answer("codes")


@procedure("com.atproto.admin.disableInviteCodes", auth=AuthKind.ADMIN)
async def disable_invite_codes(call: Call) -> Answer:
    codes = call.field("codes", required=False, kind=list) or []
    accounts = call.field("accounts", required=False, kind=list) or []
    await svc.disable_invite_codes(call.ctx, codes, accounts)
    return None


@procedure("com.atproto.admin.disableAccountInvites", auth=AuthKind.ADMIN)
async def disable_account_invites(call: Call) -> Answer:
    call.field("note", required=False)  # checked (a string); not kept
    await svc.set_account_invites(call.ctx, call.body["account"], enabled=False)
    return None


@procedure("com.atproto.admin.enableAccountInvites", auth=AuthKind.ADMIN)
async def enable_account_invites(call: Call) -> Answer:
    call.field("note", required=False)  # checked (a string); not kept
    await svc.set_account_invites(call.ctx, call.body["account"], enabled=True)
    return None


@procedure("com.atproto.admin.sendEmail", auth=AuthKind.ADMIN)
async def send_email(call: Call) -> Answer:
    call.field("senderDid")  # (a DID, checked; the mail is from the PDS's address)
    call.field("comment", required=False)  # checked (a string); not kept
    await svc.send_email(call.ctx, call.field("recipientDid"), call.field("content"),
                         call.field("subject", required=False))
    return {"sent": True}
