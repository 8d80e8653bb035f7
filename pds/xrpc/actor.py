"""app.bsky.actor preferences, kept by the PDS per account."""

from __future__ import annotations

from ..services import preferences as svc
from ..services.auth import AuthKind
from .app import Answer, Call
from .registry import procedure, query


@query("app.bsky.actor.getPreferences", auth=AuthKind.ACCESS)
async def get_preferences(call: Call) -> Answer:
    return {"preferences": await svc.get_preferences(call.ctx, call.auth)}


@procedure("app.bsky.actor.putPreferences", auth=AuthKind.ACCESS)
async def put_preferences(call: Call) -> Answer:
    prefs = svc.check_preferences(call.field("preferences", kind=list))
    await svc.put_preferences(call.ctx, call.auth, prefs)
    return None
