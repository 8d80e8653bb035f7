"""The email flows driven by the official client, @atproto/api (tests/node/email_flow.mjs),
against `pds serve --workers 2`, with every token read from the mail a real SMTP server
(aiosmtpd) received."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import running_server
from mail_util import SmtpServer
from test_interop_api import last_json_line, run_script

pytestmark = pytest.mark.slow


def test_email_flows_with_the_official_client(tmp_path: Path, node: str) -> None:
    maildir = tmp_path / "maildir"
    maildir.mkdir()
    smtp = SmtpServer(save_dir=maildir).start()
    try:
        env = {"PDS_EMAIL_SMTP_URL": smtp.url, "PDS_EMAIL_FROM_ADDRESS": "pds@example.com"}
        with running_server(tmp_path, env=env) as server:
            out = last_json_line(run_script(node, server, "email_flow.mjs", "--pds",
                                            server.url, "--maildir", str(maildir)))
    finally:
        smtp.stop()
    assert out["did"].startswith("did:web:")
    # To the first address: confirm, update. To the second: confirm, update (codes on),
    # code, reset, code, PLC, delete.
    assert out["mails"] == 7
    assert len(smtp.inbox.messages) == 9
