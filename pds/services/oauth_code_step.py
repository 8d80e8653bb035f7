"""The emailed-code step of the OAuth pages, for accounts with sign-in codes (2FA) on.

A right password for such an account doesn't sign the browser in: it mails a code (the
email token machinery's `2fa` token: single use, 15 minutes, rate limited) and hands the
page a *step*, a short-lived value signed with the server's secret that the code form
carries back. It names the account, the place it was issued for (one authorization
request, or the account page), the browser (a hash of its CSRF cookie), a fingerprint of
the account's password hash, and whether to remember the device. So the code step can't
be reached without the password step, nor used from another browser, for another
request, or after the password changed; any worker checks it without shared state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from .account import Account
from .email import TOKEN_TTL

STEP_TTL = TOKEN_TTL  # as long as the code it waits for
ACCOUNT_PAGE = "account"  # the `where` of a step issued on /oauth/account
MAX_STEP = 1024
_DOMAIN = b"pds oauth code step\0"  # this key signs nothing else


@dataclass(frozen=True)
class CodeStep:
    """A verified step: whose code the page waits for, and what to do after it."""

    did: str
    remember: bool
    hint: str  # the masked address the code went to


def mask_email(address: str | None) -> str:
    """An address shown only as much as its owner needs to recognise it:
    `alice@example.com` -> `a•••e@example.com`."""
    local, _, domain = (address or "").rpartition("@")
    if not local:
        return "your email address"
    shown = local[0] + "•••" + (local[-1] if len(local) > 2 else "")
    return f"{shown}@{domain}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _password_mark(acct: Account) -> str:
    # A changed password ends every step issued under the old one.
    return hashlib.sha256((acct.password_hash or "").encode()).hexdigest()[:16]


class Steps:
    """Issues and opens code steps with a key derived from the server's secret."""

    def __init__(self, secret: str) -> None:
        self.key = hashlib.sha256(_DOMAIN + secret.encode()).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()

    def issue(self, acct: Account, where: str, browser: str, remember: bool,
              now: float | None = None) -> str:
        """The step for `acct` after its password, on `where`, in `browser` (the
        browser's CSRF value, stored hashed)."""
        body = {"d": acct.did, "w": where, "b": _browser(browser), "r": remember,
                "p": _password_mark(acct), "h": mask_email(acct.email),
                "e": int((time.time() if now is None else now) + STEP_TTL)}
        payload = json.dumps(body, separators=(",", ":")).encode()
        return _b64(payload) + "." + _b64(self._sign(payload))

    def open(self, value: Any, where: str, browser: str, load: Any,
             now: float | None = None) -> tuple[CodeStep, Account] | None:
        """The step `value` names, with its account (`load(did)`), if it is genuine,
        unexpired, for `where` and `browser`, and the password is still the one it was
        issued under; None otherwise."""
        if not isinstance(value, str) or len(value) > MAX_STEP or value.count(".") != 1:
            return None
        text, _, mac = value.partition(".")
        try:
            payload, sig = _unb64(text), _unb64(mac)
            if not hmac.compare_digest(sig, self._sign(payload)):
                return None
            body = json.loads(payload)
            did, expires = str(body["d"]), int(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < (time.time() if now is None else now) or body.get("w") != where \
                or not hmac.compare_digest(str(body.get("b")), _browser(browser)):
            return None
        acct = load(did)
        if acct is None or not hmac.compare_digest(str(body.get("p")), _password_mark(acct)):
            return None
        return CodeStep(did, bool(body.get("r")), str(body.get("h", ""))), acct


def _browser(csrf: str) -> str:
    return hashlib.sha256(("browser\0" + csrf).encode()).hexdigest()
