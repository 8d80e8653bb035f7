"""app.bsky.actor preferences, kept by the PDS per account (`preferences.json`).

An app password neither sees nor changes the private ones (as the reference: personal
details); what it can't see is kept when it writes the rest.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from ..errors import InvalidInput
from ..repo.codec import InvalidData, json_to_value
from .auth import AuthInfo
from .context import AppContext
from .threads import blocking

PREFERENCES = "preferences.json"
# Preferences an app password may not read or change (reference: personal details).
PERSONAL_DETAILS = "app.bsky.actor.defs#personalDetailsPref"
PRIVATE_PREFS = {PERSONAL_DETAILS}
# Computed from the birth date on every read, never stored (as the reference: read-only).
DECLARED_AGE = "app.bsky.actor.defs#declaredAgePref"


def age_on(birth: date, today: date) -> int:
    """Whole years from `birth` to `today`."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def declared_age(prefs: list[dict], today: date | None = None) -> dict | None:
    """The declaredAgePref of the personal details' birth date (None without a readable
    one): whether the account is over 13, 16 and 18."""
    details = next((p for p in prefs if p.get("$type") == PERSONAL_DETAILS), None)
    birth = details.get("birthDate") if details else None
    if not isinstance(birth, str) or not 10 <= len(birth) <= 64:
        return None
    try:
        born = datetime.fromisoformat(birth.replace("Z", "+00:00")).date()
    except ValueError:
        return None
    age = age_on(born, today or datetime.now(UTC).date())
    return {"$type": DECLARED_AGE, "isOverAge13": age >= 13, "isOverAge16": age >= 16,
            "isOverAge18": age >= 18}


def check_preferences(prefs: list[Any]) -> list[dict]:
    """Each preference: an object with an `app.bsky.*` `$type`, valid as data."""
    for p in prefs:
        if not isinstance(p, dict) or not isinstance(p.get("$type"), str):
            raise InvalidInput("Preference is missing a $type")
        if not p["$type"].startswith("app.bsky."):
            raise InvalidInput("Some preferences are not in the app.bsky namespace")
        try:
            json_to_value(p)
        except InvalidData as e:
            raise InvalidInput(f"Invalid preference: {e}") from None
    return prefs


def _get(ctx: AppContext, auth: AuthInfo) -> list[dict]:
    prefs = ctx.accounts.read_doc(auth.account, PREFERENCES, [])
    age = declared_age(prefs)  # an app password sees it, though not the birth date
    if auth.is_app_password:
        prefs = [p for p in prefs if p.get("$type") not in PRIVATE_PREFS]
    return prefs + ([age] if age is not None else [])


async def get_preferences(ctx: AppContext, auth: AuthInfo) -> list[dict]:
    """The caller's preferences (less the private ones for an app password)."""
    return await blocking(_get, ctx, auth)


def _put(ctx: AppContext, auth: AuthInfo, prefs: list[dict]) -> None:
    prefs = [p for p in prefs if p["$type"] != DECLARED_AGE]  # read-only: computed
    old = ctx.accounts.read_doc(auth.account, PREFERENCES, [])
    if auth.is_app_password:
        if any(p["$type"] in PRIVATE_PREFS for p in prefs):
            raise InvalidInput("Do not have authorization to set preferences.")
        # Keep what an app password cannot see.
        prefs = [p for p in old if p.get("$type") in PRIVATE_PREFS] + prefs
    ctx.accounts.write_doc(auth.account, PREFERENCES, prefs)


async def put_preferences(ctx: AppContext, auth: AuthInfo, prefs: list[dict]) -> None:
    """Replace the caller's preferences (checked with `check_preferences`)."""
    await blocking(_put, ctx, auth, prefs)
