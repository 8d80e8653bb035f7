"""PLC operations for moving an account (com.atproto.identity.signPlcOperation and
submitPlcOperation), as the reference PDS does them.

- Moving out (`sign_operation`, on the old PDS): with the token mailed by
  requestPlcOperationSignature, an operation over the DID's current state at the PLC
  directory (its last operation, whose CID becomes `prev`), with the fields the caller
  asks changed, signed by this PDS's rotation key, which must be among the DID's
  rotation keys. The operation is returned, not submitted.
- Moving in (`submit_operation`, on the new PDS): a signed operation is submitted to the
  directory only if it leaves the DID hosted here: our `#atproto_pds` endpoint, the
  account's signing key here as its `atproto` verification method, our rotation key
  among its rotation keys, and the account's handle first in alsoKnownAs. Then
  `#identity`.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput, UpstreamFailure
from ..repo.did import PDS_SERVICE_TYPE, IdentityError
from ..repo.plc import normalize_plc_op, plc_op_cid
from ..repo.syntax import is_valid_did
from . import email
from .account import Use, load, require
from .context import AppContext
from .threads import blocking

MAX_KEYS = 10
MAX_ENTRIES = 10
MAX_TEXT = 2048


def _plc_did(did: str) -> str:
    if not did.startswith("did:plc:"):
        raise InvalidInput(f"{did} is not a did:plc: only did:plc operations are signed")
    return did


def _directory_error(e: IdentityError) -> Exception:
    """A failed directory call: unreachable is the directory's failure (502), a refused
    or unusable answer the operation's (400)."""
    text = str(e)
    if "unreachable" in text:
        return UpstreamFailure(text)
    return InvalidInput(text)


# --- the fields a caller may set --------------------------------------------------------------


def _strings(value: Any, name: str, most: int) -> list[str]:
    if (not isinstance(value, list) or len(value) > most
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in value)):
        raise InvalidInput(f"Invalid {name}: a list of at most {most} strings")
    return list(value)


def _methods(value: Any) -> dict[str, str]:
    if (not isinstance(value, dict) or len(value) > MAX_ENTRIES
            or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= MAX_TEXT
                       for k, v in value.items())):
        raise InvalidInput("Invalid verificationMethods: an object of did:key strings")
    return dict(value)


def _services(value: Any) -> dict[str, dict[str, str]]:
    ok = isinstance(value, dict) and len(value) <= MAX_ENTRIES
    if ok:
        for k, v in value.items():
            ok = ok and isinstance(k, str) and isinstance(v, dict) and set(v) == {
                "type", "endpoint"} and all(isinstance(x, str) and len(x) <= MAX_TEXT
                                            for x in v.values())
    if not ok:
        raise InvalidInput("Invalid services: an object of {type, endpoint} objects")
    return {k: dict(v) for k, v in value.items()}


def requested_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The operation fields signPlcOperation's input asks for (each checked)."""
    out: dict[str, Any] = {}
    if body.get("rotationKeys") is not None:
        out["rotationKeys"] = _strings(body["rotationKeys"], "rotationKeys", MAX_KEYS)
    if body.get("alsoKnownAs") is not None:
        out["alsoKnownAs"] = _strings(body["alsoKnownAs"], "alsoKnownAs", MAX_ENTRIES)
    if body.get("verificationMethods") is not None:
        out["verificationMethods"] = _methods(body["verificationMethods"])
    if body.get("services") is not None:
        out["services"] = _services(body["services"])
    return out


# --- signing (moving out) ---------------------------------------------------------------------


def _spend_token(ctx: AppContext, did: str, token: Any) -> None:
    require(load(ctx, did), Use.MANAGE, did)
    if not token:
        raise InvalidInput("email confirmation token required to sign PLC operations")
    email.spend(ctx, did, "plc_operation", token)


async def sign_operation(ctx: AppContext, did: str, body: dict[str, Any]) -> dict[str, Any]:
    """signPlcOperation: the signed operation (see the module docstring)."""
    _plc_did(did)
    changes = requested_changes(body)
    await blocking(_spend_token, ctx, did, body.get("token"))
    try:
        last = await ctx.identity.get_last_op(did)
    except IdentityError as e:
        raise _directory_error(e) from None
    if last.get("type") == "plc_tombstone":
        raise InvalidInput("Did is tombstoned")
    try:
        current = normalize_plc_op(last)
    except (KeyError, TypeError, AttributeError):
        raise InvalidInput("the DID's last operation is malformed") from None
    ours = ctx.identity.plc_rotation_key().public_key().did_key()
    if ours not in (current.get("rotationKeys") or []):
        raise InvalidInput("This PDS's rotation key is not among the DID's rotation keys: "
                           "it can't sign for it")
    op = {
        "type": "plc_operation",
        "rotationKeys": current.get("rotationKeys") or [],
        "verificationMethods": current.get("verificationMethods") or {},
        "alsoKnownAs": current.get("alsoKnownAs") or [],
        "services": current.get("services") or {},
        **changes,
        "prev": plc_op_cid(last),
    }
    try:
        return ctx.identity.sign_plc_operation(op)
    except IdentityError as e:
        raise InvalidInput(str(e)) from None


# --- submitting (moving in) -------------------------------------------------------------------


def check_operation(ctx: AppContext, did: str, op: Any) -> dict[str, Any]:
    """The operation if it leaves `did` hosted here (blocking: reads the account and its
    key); InvalidInput naming what is wrong, in the reference's words."""
    acct = require(load(ctx, did), Use.MANAGE, did)
    if (not isinstance(op, dict) or op.get("type") != "plc_operation"
            or not isinstance(op.get("sig"), str) or "prev" not in op):
        raise InvalidInput("Invalid operation")
    rotation = _strings(op.get("rotationKeys"), "rotationKeys", MAX_KEYS)
    methods = _methods(op.get("verificationMethods"))
    services = _services(op.get("services"))
    aka = _strings(op.get("alsoKnownAs"), "alsoKnownAs", MAX_ENTRIES)
    ours = ctx.identity.plc_rotation_key().public_key().did_key()
    if ours not in rotation:
        raise InvalidInput("Rotation keys do not include server's rotation key")
    pds = services.get("atproto_pds") or {}
    if pds.get("type") != PDS_SERVICE_TYPE:
        raise InvalidInput("Incorrect type on atproto_pds service")
    if pds.get("endpoint") != ctx.settings.public_url:
        raise InvalidInput("Incorrect endpoint on atproto_pds service")
    if methods.get("atproto") != ctx.signing_key(did).public_key().did_key():
        raise InvalidInput("Incorrect signing key")
    if acct.handle and (not aka or aka[0] != f"at://{acct.handle}"):
        raise InvalidInput("Incorrect handle in alsoKnownAs")
    return op


async def submit_operation(ctx: AppContext, did: str, op: Any) -> None:
    """submitPlcOperation: check (`check_operation`), submit, announce `#identity`."""
    if not is_valid_did(did):
        raise InvalidInput("Invalid DID")
    _plc_did(did)
    op = await blocking(check_operation, ctx, did, op)
    try:
        await ctx.identity.submit_plc_operation(did, op)
    except IdentityError as e:
        raise _directory_error(e) from None
    await blocking(ctx.events.identity, did)
    await ctx.identity.resolve_did(did, force=True)  # this worker's cache: the new doc
