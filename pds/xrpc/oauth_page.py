"""The sign-in, consent and account pages: plain server-rendered HTML (no JavaScript),
readable on a phone, every value escaped."""

from __future__ import annotations

from html import escape

from ..services.oauth_flow import Page

_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:#f3f4f6;color:#111827;padding:0 .75rem}
main{max-width:26rem;margin:2rem auto;overflow-wrap:anywhere;padding:1.5rem;
background:#fff;border-radius:12px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
h1{font-size:1.35rem;margin:0 0 .25rem}
p.host{color:#4b5563;margin:0 0 1.25rem;font-size:.9rem}
label{display:block;font-weight:600;margin:.9rem 0 .3rem}
input[type=text],input[type=password]{width:100%;padding:.7rem;font-size:1rem;
border:1px solid #9ca3af;border-radius:8px}
input:focus,button:focus{outline:3px solid #2563eb;outline-offset:1px}
.check{display:flex;gap:.5rem;align-items:center;font-weight:400}
.buttons{display:flex;gap:.75rem;margin-top:1.5rem}
button{flex:1;padding:.75rem;font:inherit;font-weight:600;border-radius:8px;
border:1px solid #1d4ed8;background:#1d4ed8;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#1f2937;border-color:#9ca3af}
button.link{flex:none;background:none;border:none;color:#1d4ed8;padding:0;
text-decoration:underline;font-weight:400}
.error{background:#fef2f2;border:1px solid #fca5a5;color:#991b1b;padding:.7rem;
border-radius:8px}
ul.asks{padding-left:1.2rem}ul.asks li{margin:.35rem 0}
.app{font-weight:700}.muted{color:#4b5563;font-size:.9rem;overflow-wrap:anywhere}
.grant{border-top:1px solid #e5e7eb;padding:.75rem 0}
.notice{background:#eff6ff;border:1px solid #93c5fd;color:#1e3a8a;padding:.7rem;
border-radius:8px}
input.code{font:600 1.35rem/1.2 ui-monospace,SFMono-Regular,Menlo,monospace;
letter-spacing:.12em;text-transform:uppercase;text-align:center}
p.more{margin:1rem 0 0;text-align:center}
"""


def _doc(title: str, host: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{escape(title)}</title><style>{_STYLE}</style></head><body><main>'
            f'<h1>{escape(title)}</h1><p class="host">{escape(host)}</p>{body}'
            f'</main></body></html>')


def _error(page: Page) -> str:
    return f'<p class="error" role="alert">{escape(page.error)}</p>' if page.error else ""


def _hidden(csrf: str, request_uri: str | None = None) -> str:
    out = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    if request_uri:
        out += f'<input type="hidden" name="request_uri" value="{escape(request_uri)}">'
    return out


def _app(page: Page) -> str:
    assert page.pending is not None
    c = page.pending.client
    return escape(c.name)


def _sign_in_form(page: Page, csrf: str, action: str, hint: str = "") -> str:
    request_uri = page.pending.request_uri if page.pending else None
    return (f'<form method="post" action="{action}">{_hidden(csrf, request_uri)}'
            f'{_error(page)}'
            f'<label for="identifier">Handle or email</label>'
            f'<input type="text" id="identifier" name="identifier" value="{escape(hint)}" '
            f'autocomplete="username" autocapitalize="none" spellcheck="false" required>'
            f'<label for="password">Password</label>'
            f'<input type="password" id="password" name="password" '
            f'autocomplete="current-password" required>'
            f'<label class="check"><input type="checkbox" name="remember" id="remember">'
            f' Remember this device</label>'
            f'<div class="buttons"><button type="submit" name="action" value="sign_in">'
            f'Sign in</button></div></form>')


def render(page: Page, csrf: str, host: str) -> str:
    """The HTML of a page step."""
    if page.step == "sign_in":
        assert page.pending is not None
        hint = page.pending.rec.get("loginHint") or ""
        intro = (f'<p><span class="app">{_app(page)}</span> wants you to sign in with '
                 f'your account on this server.</p>')
        return _doc("Sign in", host, intro + _sign_in_form(page, csrf, "/oauth/authorize",
                                                           hint))
    if page.step == "code":
        return _doc("Check your email", host, _code_form(page, csrf))
    if page.step == "consent":
        return _doc("Authorize app", host, _consent(page, csrf))
    if page.step == "account":
        return _doc("Your account", host, _account(page, csrf))
    return _doc("Something went wrong", host, _error(page))


def _code_form(page: Page, csrf: str) -> str:
    """The emailed-code step: the code field, "Sign in", and a way to get a new code."""
    request_uri = page.pending.request_uri if page.pending else None
    action = "/oauth/authorize" if page.pending else "/oauth/account"
    notice = (f'<p class="notice" role="status">{escape(page.notice)}</p>'
              if page.notice else "")
    other = ('<button type="submit" name="action" value="switch" class="link" '
             'formnovalidate>Use another account</button>' if page.pending
             else '<a href="/oauth/account">Use another account</a>')
    return (f'<p>Enter the code we emailed to <strong>{escape(page.hint or "")}</strong>.'
            f'</p><form method="post" action="{action}">{_hidden(csrf, request_uri)}'
            f'<input type="hidden" name="step" value="{escape(page.code_step or "")}">'
            f'{_error(page)}{notice}'
            f'<label for="code">Code</label>'
            f'<input type="text" id="code" name="code" class="code" maxlength="64" '
            f'autocomplete="one-time-code" autocapitalize="characters" spellcheck="false" '
            f'placeholder="XXXXX-XXXXX" aria-describedby="code-help" required autofocus>'
            f'<p class="muted" id="code-help">The code works once, for 15 minutes. Not '
            f'there? Look in your spam folder.</p>'
            f'<div class="buttons"><button type="submit" name="action" value="code">'
            f'Sign in</button></div>'
            f'<p class="more">Didn\'t get it? <button type="submit" name="action" '
            f'value="resend" class="link" formnovalidate>Send a new code</button></p>'
            f'<p class="more">{other}</p></form>')


def _consent(page: Page, csrf: str) -> str:
    assert page.pending is not None
    client = page.pending.client
    where = f'<p class="muted">{escape(client.client_id)}</p>'
    asks = "".join(f"<li>{escape(a)}</li>" for a in page.asks)
    return (f'<p>Signed in as <strong>{escape(page.handle or "")}</strong>.</p>'
            f'<p><span class="app">{_app(page)}</span> asks to:</p>{where}'
            f'<ul class="asks">{asks}</ul>'
            f'<p class="muted">It will never see your password. You can take this back '
            f'at any time on <a href="/oauth/account">your account page</a>.</p>'
            f'<form method="post" action="/oauth/authorize">'
            f'{_hidden(csrf, page.pending.request_uri)}'
            f'<div class="buttons">'
            f'<button type="submit" name="action" value="deny" class="secondary">Deny'
            f'</button><button type="submit" name="action" value="authorize">Authorize'
            f'</button></div>'
            f'<p><button type="submit" name="action" value="switch" class="link">'
            f'Not you? Use another account</button></p></form>')


def _account(page: Page, csrf: str) -> str:
    if page.did is None:
        return ('<p>Sign in to see the apps you have authorized.</p>'
                + _sign_in_form(page, csrf, "/oauth/account"))
    rows = []
    for g in page.grants:
        asks = "; ".join(g["asks"])
        rows.append(
            f'<div class="grant"><div class="app">{escape(g["clientName"])}</div>'
            f'<div class="muted">{escape(g["clientId"])}</div>'
            f'<div class="muted">{escape(asks)}</div>'
            f'<form method="post" action="/oauth/account">{_hidden(csrf)}'
            f'<input type="hidden" name="id" value="{escape(g["id"])}">'
            f'<div class="buttons"><button type="submit" name="action" value="revoke" '
            f'class="secondary">Revoke access</button></div></form></div>')
    listing = "".join(rows) or '<p class="muted">No apps are authorized.</p>'
    return (f'<p>Signed in as <strong>{escape(page.handle or "")}</strong>.</p>'
            f'<h2 style="font-size:1.1rem">Authorized apps</h2>{listing}'
            f'<form method="post" action="/oauth/account">{_hidden(csrf)}'
            f'<div class="buttons"><button type="submit" name="action" value="sign_out" '
            f'class="secondary">Sign out</button></div></form>')
