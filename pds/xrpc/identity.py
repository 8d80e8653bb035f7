"""com.atproto.identity.*"""

from __future__ import annotations

from ..errors import InvalidInput
from ..services import email, plc_ops, sessions
from ..services.auth import AuthKind
from ..services.threads import blocking
from .app import Answer, Call
from .registry import procedure, query


@query("com.atproto.identity.resolveHandle")
async def resolve_handle(call: Call) -> Answer:
    handle = call.param("handle", required=True)  # a handle: its lexicon's format
    did = await call.ctx.identity.resolve_handle(handle.lower())
    if did is None:
        raise InvalidInput("Unable to resolve handle", "HandleNotFound")
    return {"did": did}


@procedure("com.atproto.identity.updateHandle", auth=AuthKind.ACCESS)
async def update_handle(call: Call) -> Answer:
    await call.ctx.lifecycle.update_handle(call.auth.did, call.field("handle"))
    return None


@query("com.atproto.identity.getRecommendedDidCredentials", auth=AuthKind.ACCESS)
async def get_recommended_did_credentials(call: Call) -> Answer:
    return await blocking(sessions.recommended_did_credentials, call.ctx,
                                   call.auth.did)


@procedure("com.atproto.identity.requestPlcOperationSignature", auth=AuthKind.ACCESS_FULL)
async def request_plc_operation_signature(call: Call) -> Answer:
    await email.send_token(call.ctx, call.auth.did, "plc_operation")
    return None


@procedure("com.atproto.identity.signPlcOperation", auth=AuthKind.ACCESS_FULL)
async def sign_plc_operation(call: Call) -> Answer:
    op = await plc_ops.sign_operation(call.ctx, call.auth.did, call.body)
    return {"operation": op}


@procedure("com.atproto.identity.submitPlcOperation", auth=AuthKind.ACCESS)
async def submit_plc_operation(call: Call) -> Answer:
    await plc_ops.submit_operation(call.ctx, call.auth.did, call.body["operation"])
    return None
