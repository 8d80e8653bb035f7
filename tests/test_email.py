"""Email: tokens mailed through a real SMTP server (aiosmtpd), the flows that use them,
and the spool that keeps mail through outages and crashes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from harness import running_server
from mail_util import SmtpServer, token_of
from server_util import Api, app_context, err, ok

from pds.errors import InvalidInput


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(smtp: SmtpServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("email")
    env = {"PDS_EMAIL_SMTP_URL": smtp.url, "PDS_EMAIL_FROM_ADDRESS": "pds@example.com"}
    with running_server(base, env=env) as server, Api(server) as client:
        yield client


def _use(api: Api, did: str, purpose: str, token: str) -> None:
    ctx = app_context(api.server.data_dir)
    asyncio.run(_use_async(ctx, did, purpose, token))


async def _use_async(ctx, did, purpose, token) -> None:  # type: ignore[no-untyped-def]
    from pds.services.email import use_token
    await use_token(ctx, did, purpose, token)


def test_plc_operation_token_is_mailed_and_works_once(api: Api, smtp: SmtpServer) -> None:
    acct = api.create_account()
    ok(api.post("com.atproto.identity.requestPlcOperationSignature", token=acct.access))
    [mail] = smtp.inbox.wait(acct.email)
    assert mail["From"] == "pds@example.com"
    token = token_of(mail)
    with pytest.raises(InvalidInput) as wrong:
        _use(api, acct.did, "plc_operation", "AAAAA-AAAAA")
    assert wrong.value.error == "InvalidToken"
    _use(api, acct.did, "plc_operation", token.lower())
    with pytest.raises(InvalidInput) as again:
        _use(api, acct.did, "plc_operation", token)
    assert again.value.error == "InvalidToken"
    err(api.post("com.atproto.identity.requestPlcOperationSignature"), 401)
