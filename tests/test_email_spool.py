"""The mail spool, end to end: mail is on disk before the request answers, so neither an
SMTP server that is down nor a kill -9 of the PDS loses it; it is delivered once the
server is back, and leaves the spool only then. Without SMTP it stays for the operator
(`pds mail list/show/send`), `pds verify` counts it and `pds backup` copies it. Delivery
over STARTTLS and smtps:// with a URL-encoded user and password, to aiosmtpd servers
with a certificate the PDS is made to trust (SSL_CERT_FILE)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from urllib.parse import quote

import pytest
from harness import free_port, kill9, run_pds, wait_for
from mail_util import SmtpServer, spooled_token, token_of
from server_util import Api, ok

pytestmark = pytest.mark.slow


def _spool(data: Path) -> list[dict]:
    mail = data / "mail"
    return [json.loads(p.read_text()) for p in sorted(mail.glob("*.json"))] \
        if mail.is_dir() else []


def test_smtp_down_then_back_delivers(new_server) -> None:  # type: ignore[no-untyped-def]
    smtp = SmtpServer(free_port())  # not started: nobody listens on its port yet
    server = new_server(env={"PDS_EMAIL_SMTP_URL": smtp.url})
    api = Api(server)
    acct = api.create_account()
    ok(api.post("com.atproto.server.requestEmailConfirmation", token=acct.access))
    [doc] = _spool(server.data_dir)  # spooled before the answer
    assert doc["to"] == acct.email
    assert (server.data_dir / "mail" / f"{doc['id']}.json").stat().st_mode & 0o777 == 0o600
    wait_for(lambda: _spool(server.data_dir)[0]["attempts"] >= 1, 30, "a failed attempt")
    assert "Connection" in _spool(server.data_dir)[0]["lastError"]
    listed = run_pds("mail", "list", "--data-dir", str(server.data_dir),
                     env={"PDS_EMAIL_SMTP_URL": smtp.url}).stdout
    assert doc["id"] in listed and "retrying" in listed and acct.email in listed
    smtp.start()
    try:
        [mail] = smtp.inbox.wait(acct.email, timeout=60)
        wait_for(lambda: not _spool(server.data_dir), 10, "the spool to empty")
        ok(api.post("com.atproto.server.confirmEmail",
                    {"email": acct.email, "token": token_of(mail)}, token=acct.access))
        assert len(smtp.inbox.to(acct.email)) == 1  # delivered once
    finally:
        smtp.stop()


def test_spool_survives_kill9_and_delivers_after_restart(new_server) -> None:  # type: ignore[no-untyped-def]
    smtp = SmtpServer(free_port())
    env = {"PDS_EMAIL_SMTP_URL": smtp.url}
    server = new_server(env=env)
    data = server.data_dir
    api = Api(server)
    accounts = [api.create_account() for _ in range(3)]
    for acct in accounts:
        ok(api.post("com.atproto.server.requestPasswordReset", {"email": acct.email}))
    kill9(server)
    assert len(_spool(data)) == 3
    verified = run_pds("verify", "--data-dir", str(data)).stdout
    assert "3 spooled messages: OK" in verified, verified
    smtp.start()
    try:
        api = Api(new_server.serve(data, env=env))
        for acct in accounts:
            [mail] = smtp.inbox.wait(acct.email, timeout=60)
            ok(api.post("com.atproto.server.resetPassword",
                        {"token": token_of(mail), "password": "after the crash"}))
        wait_for(lambda: not _spool(data), 10, "the spool to empty")
    finally:
        smtp.stop()


def test_without_smtp_mail_waits_for_the_operator(new_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = new_server()
    data = server.data_dir
    # `pds init` shows how to set SMTP up, commented out.
    assert "\n# PDS_EMAIL_SMTP_URL=smtps://" in (data / "pds.env").read_text()
    api = Api(server)
    acct = api.create_account()
    ok(api.post("com.atproto.identity.requestPlcOperationSignature", token=acct.access))
    [doc] = _spool(data)
    listed = run_pds("mail", "list", "--data-dir", str(data)).stdout.splitlines()
    assert len(listed) == 1 and listed[0].split("\t")[2:5] == [acct.email, "0", "held"]
    shown = run_pds("mail", "show", doc["id"], "--data-dir", str(data)).stdout
    assert f"To: {acct.email}" in shown and spooled_token(data, acct.email) in shown
    bad = run_pds("mail", "show", "../../pds.env", "--data-dir", str(data), check=False)
    assert bad.returncode == 1 and "not a message id" in bad.stderr
    # A backup holds it; so does the restored copy.
    run_pds("backup", str(tmp_path / "copy"), "--data-dir", str(data))
    assert [p.name for p in (tmp_path / "copy" / "mail").iterdir()] == [f"{doc['id']}.json"]
    # `pds mail send` delivers by hand once there is a server.
    with_smtp = SmtpServer().start()
    try:
        env = {"PDS_EMAIL_SMTP_URL": with_smtp.url}
        assert run_pds("mail", "send", "--data-dir", str(data), env=env).stdout == "sent 1\n"
        assert token_of(with_smtp.inbox.wait(acct.email)[0]) == doc["text"].split("\n")[4]
        assert _spool(data) == []
    finally:
        with_smtp.stop()
    assert run_pds("mail", "send", "--data-dir", str(data), check=False).returncode == 1


def _certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, key and certificate in one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "smtp.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return pem


USER, PASSWORD = "pds@example.com", "p@ss:w/rd %20"


def _authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    from aiosmtpd.smtp import AuthResult
    good = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=good)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_tls_and_login(new_server, tmp_path: Path, scheme: str) -> None:  # type: ignore[no-untyped-def]
    pem = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    # (aiosmtpd offers AUTH over implicit TLS only when not told to require TLS for it:
    # it does not count that connection as TLS; the client checks the certificate.)
    tls = {"tls_context": context, "require_starttls": True, "auth_require_tls": True} \
        if scheme == "smtp" else {"ssl_context": context, "auth_require_tls": False}
    smtp = SmtpServer(**tls, authenticator=_authenticator, auth_required=True).start()
    try:
        url = f"{scheme}://{quote(USER, safe='')}:{quote(PASSWORD, safe='')}@127.0.0.1:{smtp.port}"
        server = new_server(env={"PDS_EMAIL_SMTP_URL": url, "SSL_CERT_FILE": str(pem)})
        api = Api(server)
        acct = api.create_account()
        ok(api.post("com.atproto.server.requestAccountDelete", token=acct.access))
        [mail] = smtp.inbox.wait(acct.email, timeout=30)
        ok(api.post("com.atproto.server.deleteAccount",
                    {"did": acct.did, "password": acct.password, "token": token_of(mail)}))
    finally:
        smtp.stop()
