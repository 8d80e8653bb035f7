"""Email: tokens mailed through a real SMTP server (aiosmtpd, started here) and the flows
that spend them, end to end over HTTP: confirming and changing the address, resetting a
password, deleting an account, sign-in codes, the PLC operation token. Tokens work once,
not after 15 minutes (an expired one is planted through the store, not waited for), and
are rate limited. The spool's survival of SMTP outages and crashes: test_email_spool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import running_server
from mail_util import SmtpServer, body, token_of
from server_util import Api, account_events, app_context, err, ok

from pds.errors import InvalidInput, RateLimited
from pds.services.email import TOKEN_TTL, issue, new_token, spend, use_token
from pds.store.layout import DataDir
from pds.store.tokens import TokenStore

NEW_PASSWORD = "a new password 22"


@pytest.fixture(scope="module")
def api(smtp: SmtpServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("email")
    env = {"PDS_EMAIL_SMTP_URL": smtp.url, "PDS_EMAIL_FROM_ADDRESS": "pds@example.com"}
    with running_server(base, env=env) as server, Api(server) as client:
        yield client


def _use(data_dir: Path, did: str, purpose: str, token: str) -> None:
    """use_token, in process over the running server's data dir."""
    asyncio.run(use_token(app_context(data_dir), did, purpose, token))


def _plant_expired(data_dir: Path, did: str, purpose: str) -> str:
    """A token issued just over its lifetime ago, stored as the server stores one."""
    token = new_token()
    TokenStore(DataDir(data_dir)).put(did, purpose, token,
                                      issued_at=time.time() - TOKEN_TTL - 1)
    return token


def _session(api: Api, acct, password: str | None = None, **extra: str):  # type: ignore[no-untyped-def]
    return api.post("com.atproto.server.createSession",
                    {"identifier": acct.handle, "password": password or acct.password,
                     **extra})


def test_plc_operation_token_is_mailed_and_works_once(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    ok(api.post("com.atproto.identity.requestPlcOperationSignature", token=acct.access))
    [mail] = smtp.inbox.wait(acct.email)
    assert mail["From"] == "pds@example.com" and mail["Message-ID"]
    assert smtp.inbox.envelopes[-1] == ("pds@example.com", [acct.email])
    token = token_of(mail)
    # Stored hashed: the token itself is nowhere in the data dir.
    stored = (api.server.data_dir / "accounts" / acct.did / "tokens" / "plc_operation")
    assert token.encode() not in stored.read_bytes()
    assert stored.stat().st_mode & 0o777 == 0o600
    with pytest.raises(InvalidInput) as wrong:
        _use(api.server.data_dir, acct.did, "plc_operation", "AAAAA-AAAAA")
    assert wrong.value.error == "InvalidToken"
    _use(api.server.data_dir, acct.did, "plc_operation", token.lower())  # any case
    with pytest.raises(InvalidInput) as again:
        _use(api.server.data_dir, acct.did, "plc_operation", token)
    assert again.value.error == "InvalidToken"
    err(api.post("com.atproto.identity.requestPlcOperationSignature"), 401)


def test_a_new_token_replaces_the_old(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    for _ in range(2):
        ok(api.post("com.atproto.identity.requestPlcOperationSignature", token=acct.access))
    first, second = (token_of(m) for m in smtp.inbox.wait(acct.email, 2))
    assert first != second
    with pytest.raises(InvalidInput):
        _use(api.server.data_dir, acct.did, "plc_operation", first)
    _use(api.server.data_dir, acct.did, "plc_operation", second)


def test_confirm_email(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    assert ok(api.get("com.atproto.server.getSession", token=acct.access))[
        "emailConfirmed"] is False
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=acct.access))
    [mail] = smtp.inbox.wait(acct.email)
    token = token_of(mail)
    assert "confirm" in mail["Subject"].lower()
    err(api.post("com.atproto.server.confirmEmail", {"email": "else@example.com",
                                                     "token": token}, token=acct.access),
        400, "InvalidEmail")
    err(api.post("com.atproto.server.confirmEmail", {"email": acct.email,
                                                     "token": "ABCDE-ABCDE"},
                 token=acct.access), 400, "InvalidToken")
    ok(api.post("com.atproto.server.confirmEmail", {"email": acct.email.upper(),
                                                    "token": token}, token=acct.access))
    session = ok(api.get("com.atproto.server.getSession", token=acct.access))
    assert session["emailConfirmed"] is True and session["email"] == acct.email
    info = ok(api.get("com.atproto.admin.getAccountInfo", did=acct.did,
                      headers=api.admin_headers()))
    assert info["emailConfirmedAt"].startswith(time.strftime("%Y-", time.gmtime()))
    err(api.post("com.atproto.server.confirmEmail", {"email": acct.email, "token": token},
                 token=acct.access), 400, "InvalidToken")


def test_password_reset_revokes_every_session(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    second = ok(_session(api, acct))
    ok(api.post("com.atproto.server.requestPasswordReset", {"email": acct.email.upper()}))
    [mail] = smtp.inbox.wait(acct.email)
    token = token_of(mail)
    err(api.post("com.atproto.server.requestPasswordReset", {"email": "nobody@example.com"}),
        400)
    err(api.post("com.atproto.server.resetPassword",
                 {"token": "ABCDE-ABCDE", "password": NEW_PASSWORD}), 400, "InvalidToken")
    ok(api.post("com.atproto.server.resetPassword", {"token": token,
                                                     "password": NEW_PASSWORD}))
    for refresh in (acct.refresh, second["refreshJwt"]):
        err(api.post("com.atproto.server.refreshSession", token=refresh), 400)
    err(_session(api, acct), 401)
    ok(_session(api, acct, NEW_PASSWORD))
    err(api.post("com.atproto.server.resetPassword", {"token": token,
                                                      "password": "third password"}),
        400, "InvalidToken")
    ok(_session(api, acct, NEW_PASSWORD))


def test_email_update_needs_a_token_once_confirmed(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    # Unconfirmed: no token, no mail.
    assert ok(api.post("com.atproto.server.requestEmailUpdate", token=acct.access)) == {
        "tokenRequired": False}
    first = "first-" + acct.email
    ok(api.post("com.atproto.server.updateEmail", {"email": first}, token=acct.access))
    assert smtp.inbox.to(acct.email) == []
    # Confirm the new address, then change it again: now a token, mailed to it.
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=acct.access))
    ok(api.post("com.atproto.server.confirmEmail",
                {"email": first, "token": token_of(smtp.inbox.wait(first)[0])},
                token=acct.access))
    assert ok(api.post("com.atproto.server.requestEmailUpdate", token=acct.access)) == {
        "tokenRequired": True}
    token = token_of(smtp.inbox.wait(first, 2)[1])
    second = "second-" + acct.email
    err(api.post("com.atproto.server.updateEmail", {"email": second}, token=acct.access),
        400, "TokenRequired")
    err(api.post("com.atproto.server.updateEmail", {"email": second, "token": "ABCDE-FGHIJ"},
                 token=acct.access), 400, "InvalidToken")
    other = api.create_account()
    err(api.post("com.atproto.server.updateEmail", {"email": other.email, "token": token},
                 token=acct.access), 400, "InvalidEmail")
    ok(api.post("com.atproto.server.updateEmail", {"email": second, "token": token},
                token=acct.access))
    session = ok(api.get("com.atproto.server.getSession", token=acct.access))
    assert session["email"] == second and session["emailConfirmed"] is False
    ok(api.post("com.atproto.server.createSession",
                {"identifier": second, "password": acct.password}))
    # The old address is free again.
    api.create_account(email=first)


def test_delete_account_by_emailed_token(api: Api, smtp: SmtpServer) -> None:
    root = api.server.data_dir
    acct = api.create_account()
    ok(api.create_record(acct, {"text": "bye"}))
    ok(api.post("com.atproto.repo.uploadBlob", token=acct.access, content=b"\x89PNG" * 10,
                headers={"Content-Type": "image/png"}))
    ok(api.post("com.atproto.server.requestAccountDelete", token=acct.access))
    token = token_of(smtp.inbox.wait(acct.email)[0])
    assert not list((root / "accounts" / acct.did).glob("delete_token"))
    err(api.post("com.atproto.server.deleteAccount",
                 {"did": acct.did, "password": "wrong", "token": token}), 401)
    ok(api.post("com.atproto.server.deleteAccount",
                {"did": acct.did, "password": acct.password, "token": token}))
    assert not (root / "accounts" / acct.did).exists()  # repo, blobs, sessions, tokens
    assert not (root / "handles" / acct.handle).exists()
    assert (root / "tombstones" / acct.did).is_file()
    assert account_events(root, acct.did)[-1]["status"] == "deleted"
    err(api.get("com.atproto.identity.resolveHandle", handle=acct.handle), 400,
        "HandleNotFound")
    err(api.post("com.atproto.server.refreshSession", token=acct.refresh), 400)


def test_expired_tokens_are_refused(api: Api, smtp: SmtpServer) -> None:
    root = api.server.data_dir
    acct = api.create_account()
    token = _plant_expired(root, acct.did, "delete_account")
    for _ in range(2):  # refused, and nothing changes: refused again
        err(api.post("com.atproto.server.deleteAccount",
                     {"did": acct.did, "password": acct.password, "token": token}), 400,
            "ExpiredToken")
    assert (root / "accounts" / acct.did).is_dir()
    token = _plant_expired(root, acct.did, "reset_password")
    err(api.post("com.atproto.server.resetPassword", {"token": token,
                                                      "password": NEW_PASSWORD}),
        400, "ExpiredToken")
    ok(_session(api, acct))
    # use_token (signPlcOperation's check) likewise.
    token = _plant_expired(root, acct.did, "plc_operation")
    for _ in range(2):
        with pytest.raises(InvalidInput) as expired:
            _use(root, acct.did, "plc_operation", token)
        assert expired.value.error == "ExpiredToken"
    # A token just inside its lifetime still works.
    fresh = new_token()
    TokenStore(DataDir(root)).put(acct.did, "confirm_email", fresh,
                                  issued_at=time.time() - TOKEN_TTL + 30)
    ok(api.post("com.atproto.server.confirmEmail", {"email": acct.email, "token": fresh},
                token=acct.access))


def test_email_sign_in_codes(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    # Not before the address is confirmed.
    err(api.post("com.atproto.server.updateEmail",
                 {"email": acct.email, "emailAuthFactor": True}, token=acct.access), 400)
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=acct.access))
    ok(api.post("com.atproto.server.confirmEmail",
                {"email": acct.email, "token": token_of(smtp.inbox.wait(acct.email)[0])},
                token=acct.access))
    ok(api.post("com.atproto.server.requestEmailUpdate", token=acct.access))
    token = token_of(smtp.inbox.wait(acct.email, 2)[1])
    ok(api.post("com.atproto.server.updateEmail",
                {"email": acct.email, "token": token, "emailAuthFactor": True},
                token=acct.access))
    assert ok(api.get("com.atproto.server.getSession", token=acct.access))[
        "emailAuthFactor"] is True
    app_pw = ok(api.post("com.atproto.server.createAppPassword", {"name": "app"},
                         token=acct.access))["password"]

    err(_session(api, acct), 401, "AuthFactorTokenRequired")
    code = token_of(smtp.inbox.wait(acct.email, 3)[2])
    assert "sign-in" in smtp.inbox.to(acct.email)[2]["Subject"].lower()
    err(_session(api, acct, authFactorToken="ABCDE-ABCDE"), 401, "InvalidToken")
    err(_session(api, acct, "wrong password", authFactorToken=code), 401)
    session = ok(_session(api, acct, authFactorToken=code))
    assert session["emailAuthFactor"] is True
    err(_session(api, acct, authFactorToken=code), 401, "InvalidToken")  # used
    ok(_session(api, acct, app_pw))  # app passwords sign apps in without codes

    # Turned off again (a token, since the address is confirmed): plain logins work.
    ok(api.post("com.atproto.server.requestEmailUpdate", token=acct.access))
    token = token_of(smtp.inbox.wait(acct.email, 4)[3])
    ok(api.post("com.atproto.server.updateEmail",
                {"email": acct.email, "token": token, "emailAuthFactor": False},
                token=acct.access))
    ok(_session(api, acct))


def test_bad_input_is_refused(api: Api) -> None:
    acct = api.create_account()
    for nsid, payload in (("com.atproto.server.confirmEmail", {"email": acct.email}),
                       ("com.atproto.server.confirmEmail", {"email": 5, "token": "x"}),
                       ("com.atproto.server.confirmEmail",
                        {"email": acct.email, "token": "x" * 100_000}),
                       ("com.atproto.server.updateEmail", {"email": "not an address"}),
                       ("com.atproto.server.updateEmail",
                        {"email": acct.email, "emailAuthFactor": "yes"}),
                       ("com.atproto.server.requestPasswordReset", {"email": ["x"]}),
                       ("com.atproto.server.resetPassword", {"token": "x"}),
                       ("com.atproto.server.resetPassword",
                        {"token": "x" * 10_000, "password": "pw"})):
        err(api.post(nsid, payload, token=acct.access), 400)
    err(api.post("com.atproto.server.requestEmailConfirmation"), 401)
    err(api.post("com.atproto.server.updateEmail", {"email": acct.email}), 401)


def test_the_admin_mails_an_account(api: Api, smtp: SmtpServer) -> None:
    """com.atproto.admin.sendEmail: the admin's text to the account's address, taken
    down or not, under the subject given (or the reference's)."""
    acct = api.create_account()
    admin = api.admin_headers()
    mail = {"recipientDid": acct.did, "senderDid": api.service_did,
            "content": "Your PDS moves to a new host on Sunday.\nNothing to do.",
            "subject": "Maintenance"}
    assert ok(api.post("com.atproto.admin.sendEmail", mail, headers=admin)) == {"sent": True}
    [got] = smtp.inbox.wait(acct.email)
    assert got["Subject"] == "Maintenance" and got["To"] == acct.email
    assert "Nothing to do." in body(got)
    ok(api.post("com.atproto.admin.updateSubjectStatus", {
        "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": acct.did},
        "takedown": {"applied": True}}, headers=admin))
    unnamed = {k: v for k, v in mail.items() if k != "subject"}
    ok(api.post("com.atproto.admin.sendEmail", unnamed, headers=admin))
    assert smtp.inbox.wait(acct.email, 2)[1]["Subject"] == "Message via your PDS"

    err(api.post("com.atproto.admin.sendEmail", mail), 401)
    err(api.post("com.atproto.admin.sendEmail", mail, token=acct.access), 401)
    err(api.post("com.atproto.admin.sendEmail", mail,
                 headers=api.admin_headers("wrong password")), 401)
    for bad in ({"recipientDid": "did:web:nobody.test"}, {"subject": "two\nlines"},
                {"subject": "x" * 301}, {"content": "  "}, {"content": 5},
                {"recipientDid": "not a did"}, {"senderDid": None}):
        err(api.post("com.atproto.admin.sendEmail", {**mail, **bad}, headers=admin), 400)
    assert len(smtp.inbox.wait(acct.email, 2)) == 2  # nothing more was sent


# --- in process: concurrency and rate limits ------------------------------------------------


def test_a_token_works_once_under_a_race(tmp_path: Path) -> None:
    ctx = app_context(tmp_path / "data")
    did = _make_account(ctx)
    for _ in range(5):
        issue(ctx, did, "plc_operation")
        token = _token_in_spool(ctx)
        results: list[str] = []

        def attempt(token: str = token, results: list[str] = results) -> None:
            try:
                spend(ctx, did, "plc_operation", token)
                results.append("ok")
            except InvalidInput as e:
                results.append(str(e.error))

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["InvalidToken"] * 7 + ["ok"]


def test_issuing_is_rate_limited_per_account(tmp_path: Path) -> None:
    ctx = app_context(tmp_path / "data")
    ctx.auth.limiter.enabled = True
    did, other = _make_account(ctx), _make_account(ctx, "other2")
    for _ in range(5):
        issue(ctx, did, "confirm_email")
    with pytest.raises(RateLimited):
        issue(ctx, did, "confirm_email")
    issue(ctx, other, "confirm_email")  # another account is not held back
    assert len(ctx.mailer.spool_dir.ids()) == 6


def _make_account(ctx, name: str = "mailer1") -> str:  # type: ignore[no-untyped-def]
    from pds.services.accounts import create_account
    out = asyncio.run(create_account(ctx, {"handle": f"{name}.test", "password": "pw pw pw",
                                           "email": f"{name}@example.com"}, None, ip="1"))
    return str(out["did"])


def _token_in_spool(ctx) -> str:  # type: ignore[no-untyped-def]
    from mail_util import TOKEN_LINE
    doc = ctx.mailer.spool_dir.messages()[-1]
    return str(TOKEN_LINE.findall(doc["text"])[0])


def test_mail_text_has_the_token_on_its_own_line(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    ok(api.post("com.atproto.server.requestAccountDelete", token=acct.access))
    text = body(smtp.inbox.wait(acct.email)[0]).replace("\r\n", "\n")
    token = token_of(smtp.inbox.to(acct.email)[0])
    assert f"\n{token}\n" in text and acct.handle in text


def test_smtp_settings_are_checked(tmp_path: Path) -> None:
    from pds.config import Settings, SettingsError
    from pds.services.mailer import SmtpTarget
    for bad in ("http://mail.example.com", "smtp://", "smtp://host:0", "smtp://host:99999",
                "smtps://host/path", "smtp://host?x=1", "smtp://" + "a" * 3000):
        with pytest.raises(SettingsError, match="PDS_EMAIL_SMTP_URL"):
            Settings.load(tmp_path, env={"PDS_EMAIL_SMTP_URL": bad})
    with pytest.raises(SettingsError, match="PDS_EMAIL_FROM_ADDRESS"):
        Settings.load(tmp_path, env={"PDS_EMAIL_FROM_ADDRESS": "nobody"})
    with pytest.raises(SettingsError, match="PDS_EMAIL_FROM_ADDRESS"):
        Settings.load(tmp_path, env={"PDS_EMAIL_FROM_ADDRESS": "a@b.c\r\nBcc: x@y.z"})
    s = Settings.load(tmp_path, env={"PDS_HOSTNAME": "pds.example.com",
                                     "PDS_EMAIL_SMTP_URL": "smtps://me%40x.org:p%3Aw%2F@mx"})
    assert s.email_from_address == "noreply@pds.example.com"
    assert SmtpTarget.parse(s.email_smtp_url) == SmtpTarget("mx", 465, True, "me@x.org", "p:w/")
    assert SmtpTarget.parse("smtp://mx") == SmtpTarget("mx", 587, False, "", "")
    assert SmtpTarget.parse("smtp://mx:2525").port == 2525


# --- the sender, in process against aiosmtpd -------------------------------------------------


def _mail_context(tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    import dataclasses
    ctx = app_context(tmp_path / "data")
    ctx.settings = dataclasses.replace(ctx.settings, email_smtp_url=url)
    return ctx


def test_retries_back_off_and_refusals_stay(tmp_path: Path, smtp: SmtpServer) -> None:
    from harness import free_port
    down = _mail_context(tmp_path, f"smtp://127.0.0.1:{free_port()}")
    mid = down.mailer.spool("someone@example.com", "subject", "text\n")
    assert down.mailer.deliver() == 0
    doc = down.mailer.spool_dir.get(mid)
    assert doc["attempts"] == 1 and doc["nextAttemptAt"] >= time.time() + 3
    assert down.mailer.deliver() == 0  # not due yet: no attempt
    assert down.mailer.spool_dir.get(mid)["attempts"] == 1
    down.mailer.deliver(retry_all=True)
    doc = down.mailer.spool_dir.get(mid)
    assert doc["attempts"] == 2 and doc["nextAttemptAt"] >= time.time() + 8  # doubled

    up = _mail_context(tmp_path, smtp.url)
    refused = up.mailer.spool("refused@example.com", "subject", "text\n")
    assert up.mailer.deliver(retry_all=True) == 1  # the first one went; the refusal stays
    assert up.mailer.spool_dir.ids() == [refused]
    doc = up.mailer.spool_dir.get(refused)
    assert doc["failed"] is True and "550" in doc["lastError"]
    assert up.mailer.deliver() == 0  # failed for good: not tried again by itself
    assert [m["To"] for m in smtp.inbox.to("someone@example.com")] == ["someone@example.com"]


def test_a_display_name_in_the_from_address(tmp_path: Path, smtp: SmtpServer) -> None:
    import dataclasses
    ctx = _mail_context(tmp_path, smtp.url)
    ctx.settings = dataclasses.replace(ctx.settings,
                                       email_from_address="My PDS <pds@example.org>")
    ctx.mailer.spool("named@example.com", "subject", "text\n")
    assert ctx.mailer.deliver() == 1
    [mail] = smtp.inbox.to("named@example.com")
    assert mail["From"] == "My PDS <pds@example.org>"
    assert mail["Message-ID"].endswith("@example.org>")
    assert ("pds@example.org", ["named@example.com"]) in smtp.inbox.envelopes


def test_verify_checks_the_spool(tmp_path: Path) -> None:
    from pds.store.verify import verify_data_dir
    ctx = app_context(tmp_path / "data")
    good = ctx.mailer.spool("a@example.com", "subject", "text\n")
    torn = ctx.mailer.spool("b@example.com", "subject", "text\n")
    report = verify_data_dir(ctx.data.root)
    assert report.ok and report.mail == 2, report.problems
    (ctx.data.mail / f"{torn}.json").write_bytes(b'{"id": "')
    (ctx.data.mail / f"{good}.json").chmod(0o644)
    (ctx.data.mail / "stray").write_text("x")
    problems = verify_data_dir(ctx.data.root).problems
    assert sorted(p.split(":")[0] for p in problems) == [
        f"mail/{good}.json", f"mail/{torn}.json", "mail/stray"], problems
