"""com.atproto.server.* methods of the email address and the emailed tokens: confirming
and changing the address, resetting a password. (requestAccountDelete and deleteAccount
are with the other account methods in `server`; requestPlcOperationSignature in
`identity`.)"""

from __future__ import annotations

from ..services import email_flows as flows
from ..services.auth import AuthKind
from ..services.threads import blocking
from .app import Answer, Call
from .registry import procedure


@procedure("com.atproto.server.requestEmailConfirmation", auth=AuthKind.ACCESS)
async def request_email_confirmation(call: Call) -> Answer:
    await blocking(flows.request_confirmation, call.ctx, call.auth.did)
    return None


@procedure("com.atproto.server.confirmEmail", auth=AuthKind.ACCESS)
async def confirm_email(call: Call) -> Answer:
    await blocking(flows.confirm, call.ctx, call.auth.did, call.field("email"),
                            call.field("token"))
    return None


@procedure("com.atproto.server.requestEmailUpdate", auth=AuthKind.ACCESS_FULL)
async def request_email_update(call: Call) -> Answer:
    return await blocking(flows.request_update, call.ctx, call.auth.did)


@procedure("com.atproto.server.updateEmail", auth=AuthKind.ACCESS_FULL)
async def update_email(call: Call) -> Answer:
    await blocking(flows.update, call.ctx, call.auth.did, call.field("email"),
                            call.field("token", required=False),
                            call.field("emailAuthFactor", required=False, kind=bool))
    return None


@procedure("com.atproto.server.requestPasswordReset")
async def request_password_reset(call: Call) -> Answer:
    await blocking(flows.request_reset, call.ctx, call.field("email"), call.ip)
    return None


@procedure("com.atproto.server.resetPassword")
async def reset_password(call: Call) -> Answer:
    await blocking(flows.reset, call.ctx, call.field("token"),
                            call.field("password"), call.ip)
    return None
