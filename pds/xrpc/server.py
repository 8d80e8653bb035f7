"""com.atproto.server.*"""

from __future__ import annotations

from ..errors import InvalidInput, NotSupported
from ..repo.string_formats import is_valid_datetime
from ..services import accounts as svc
from ..services import sessions
from ..services.auth import AuthKind
from ..services.threads import blocking
from .app import Answer, Call
from .registry import procedure, query


@query("com.atproto.server.describeServer")
async def describe_server(call: Call) -> Answer:
    s = call.ctx.settings
    links = {"privacyPolicy": s.privacy_policy_url, "termsOfService": s.terms_of_service_url}
    return {"did": s.service_did, "availableUserDomains": s.handle_domains,
            "inviteCodeRequired": s.invite_required, "phoneVerificationRequired": False,
            "blobUploadLimit": s.blob_limit,
            "links": {k: v for k, v in links.items() if v},
            "contact": {"email": s.contact_email} if s.contact_email else {}}


@procedure("com.atproto.server.createAccount", auth=AuthKind.SERVICE_OPTIONAL)
async def create_account(call: Call) -> Answer:
    if not isinstance(call.body, dict):
        raise InvalidInput("Request body must be a JSON object")
    return await svc.create_account(call.ctx, call.body, call.auth, ip=call.ip)


@procedure("com.atproto.server.createSession")
async def create_session(call: Call) -> Answer:
    identifier = call.field("identifier")
    password = call.field("password")
    allow_takendown = bool(call.field("allowTakendown", required=False, kind=bool))
    factor = call.field("authFactorToken", required=False)
    return await blocking(sessions.login, call.ctx, identifier, password, call.ip,
                                   allow_takendown, factor)


@procedure("com.atproto.server.refreshSession", auth=AuthKind.REFRESH)
async def refresh_session(call: Call) -> Answer:
    return await blocking(sessions.refresh, call.ctx, call.auth)


@query("com.atproto.server.getSession", auth=AuthKind.ACCESS)
async def get_session(call: Call) -> Answer:
    return await blocking(sessions.get_session, call.ctx, call.auth)


@procedure("com.atproto.server.deleteSession", auth=AuthKind.REFRESH)
async def delete_session(call: Call) -> Answer:
    await blocking(sessions.logout, call.ctx, call.auth)
    return None


@procedure("com.atproto.server.createAppPassword", auth=AuthKind.ACCESS_FULL)
async def create_app_password(call: Call) -> Answer:
    name = call.field("name")
    privileged = bool(call.field("privileged", required=False, kind=bool))
    return await blocking(sessions.create_app_password, call.ctx, call.auth.did,
                                   name, privileged)


@query("com.atproto.server.listAppPasswords", auth=AuthKind.ACCESS_FULL)
async def list_app_passwords(call: Call) -> Answer:
    return await blocking(sessions.list_app_passwords, call.ctx, call.auth.did)


@procedure("com.atproto.server.revokeAppPassword", auth=AuthKind.ACCESS_FULL)
async def revoke_app_password(call: Call) -> Answer:
    await blocking(sessions.revoke_app_password, call.ctx, call.auth.did,
                            call.field("name"))
    return None


@procedure("com.atproto.server.createInviteCode", auth=AuthKind.ADMIN)
async def create_invite_code(call: Call) -> Answer:
    use_count = call.field("useCount", kind=int)
    if use_count < 1:
        raise InvalidInput("useCount must be at least 1")
    for_account = call.body.get("forAccount")  # a DID: its lexicon's format
    out = await blocking(svc.create_invites, call.ctx, use_count, 1,
                                  [for_account] if for_account else None)
    return {"code": out[0]["codes"][0]}


@procedure("com.atproto.server.createInviteCodes", auth=AuthKind.ADMIN)
async def create_invite_codes(call: Call) -> Answer:
    use_count = call.field("useCount", kind=int)
    count = call.field("codeCount", required=False, kind=int) or 1
    if use_count < 1 or not 1 <= count <= 100:
        raise InvalidInput("useCount must be >= 1 and codeCount 1..100")
    for_accounts = call.body.get("forAccounts")  # DIDs: its lexicon's format
    return {"codes": await blocking(svc.create_invites, call.ctx, use_count, count,
                                             for_accounts)}


@query("com.atproto.server.getAccountInviteCodes", auth=AuthKind.ACCESS_FULL)
async def get_account_invite_codes(call: Call) -> Answer:
    include_used = call.param_bool("includeUsed", default=True)
    call.param_bool("createAvailable", default=True)  # checked; codes are made by the admin
    codes = await blocking(svc.account_invite_codes, call.ctx, call.auth.did)
    if not include_used:
        codes = [c for c in codes if len(c["uses"]) < c["available"]]
    return {"codes": codes}


@procedure("com.atproto.server.activateAccount", auth=AuthKind.ACCESS_FULL)
async def activate_account(call: Call) -> Answer:
    await call.ctx.lifecycle.activate(call.auth.did)
    return None


@procedure("com.atproto.server.deactivateAccount", auth=AuthKind.ACCESS_FULL)
async def deactivate_account(call: Call) -> Answer:
    delete_after = call.field("deleteAfter", required=False)
    if delete_after is not None and not is_valid_datetime(delete_after):
        raise InvalidInput("deleteAfter must be a datetime")
    await call.ctx.lifecycle.deactivate(call.auth.did, delete_after)
    return None


@procedure("com.atproto.server.requestAccountDelete", auth=AuthKind.ACCESS_FULL)
async def request_account_delete(call: Call) -> Answer:
    await call.ctx.lifecycle.request_delete_token(call.auth.did)
    return None


@procedure("com.atproto.server.deleteAccount")
async def delete_account(call: Call) -> Answer:
    did = call.field("did")
    password = call.field("password")
    token = call.field("token")
    await call.ctx.lifecycle.delete_with_token(did, password, token, call.ip)
    return None


@query("com.atproto.server.checkAccountStatus", auth=AuthKind.ACCESS)
async def check_account_status(call: Call) -> Answer:
    return await call.ctx.lifecycle.status(call.auth.did)


@query("com.atproto.temp.checkSignupQueue", auth=AuthKind.ACCESS)
async def check_signup_queue(call: Call) -> Answer:
    """Unspecced, and asked by the Bluesky app after sign-up: there is no sign-up queue
    here (only an entryway has one), so an account is active from its creation."""
    return {"activated": True}


@query("com.atproto.server.getServiceAuth", auth=AuthKind.ACCESS)
async def get_service_auth(call: Call) -> Answer:
    return await blocking(sessions.service_auth_token, call.ctx, call.auth,
                                   call.param("aud", required=True), call.param("lxm"),
                                   call.param("exp"))


@procedure("com.atproto.server.reserveSigningKey", auth=AuthKind.NONE)
async def reserve_signing_key(call: Call) -> Answer:
    raise NotSupported("reserveSigningKey is not supported")
