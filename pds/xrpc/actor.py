"""app.bsky.actor preferences, kept by the PDS per account."""

from __future__ import annotations

from ..errors import InvalidInput
from ..repo.codec import InvalidData, json_to_value
from ..services.auth import AuthKind
from .app import Call
from .registry import procedure, query

# Preferences an app password may not read or change (reference: personal details).
PRIVATE_PREFS = {"app.bsky.actor.defs#personalDetailsPref"}


@query("app.bsky.actor.getPreferences", auth=AuthKind.ACCESS)
async def get_preferences(call: Call):
    prefs = call.ctx.accounts.read_doc(call.auth.did, "preferences.json", [])
    if call.auth.is_app_password:
        prefs = [p for p in prefs if p.get("$type") not in PRIVATE_PREFS]
    return {"preferences": prefs}


@procedure("app.bsky.actor.putPreferences", auth=AuthKind.ACCESS)
async def put_preferences(call: Call):
    prefs = call.field("preferences", kind=list)
    for p in prefs:
        if not isinstance(p, dict) or not isinstance(p.get("$type"), str):
            raise InvalidInput("Preference is missing a $type")
        if not p["$type"].startswith("app.bsky."):
            raise InvalidInput("Some preferences are not in the app.bsky namespace")
        try:
            json_to_value(p)
        except InvalidData as e:
            raise InvalidInput(f"Invalid preference: {e}") from None
    old = call.ctx.accounts.read_doc(call.auth.did, "preferences.json", [])
    if call.auth.is_app_password:
        if any(p["$type"] in PRIVATE_PREFS for p in prefs):
            raise InvalidInput("Do not have authorization to set preferences.")
        # Keep what an app password cannot see.
        prefs = [p for p in old if p.get("$type") in PRIVATE_PREFS] + prefs
    call.ctx.accounts.write_doc(call.auth.did, "preferences.json", prefs)
