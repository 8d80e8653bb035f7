"""signPlcOperation and submitPlcOperation against two real `pds serve --workers 2` on one
local official PLC directory (A: `.a.test`, B: `.b.test`; no SMTP: the emailed tokens
are read from A's spool). What they refuse leaves the PLC document as it was; what they
do is an operation the directory takes."""

from __future__ import annotations

import time

import httpx
import pytest
from harness import free_port, init_data_dir, start_server
from mail_util import spooled_token
from server_util import Api, err, ok

from pds.repo.plc import plc_op_cid

PASSWORD = "plc password"


def _serve(base, plc_url: str, domains: str):
    data, port = base / "data", free_port()
    init_data_dir(data, port, plc_url=plc_url, did_method="plc", handle_domains=domains)
    return start_server(data, port, env={"PDS_VALIDATE_OUTPUT": "true"})


@pytest.fixture(scope="module")
def pdses(tmp_path_factory, plc_url):
    a = _serve(tmp_path_factory.mktemp("plc-a"), plc_url, ".a.test")
    b = _serve(tmp_path_factory.mktemp("plc-b"), plc_url, ".b.test")
    api_a, api_b = Api(a), Api(b)
    try:
        yield api_a, api_b, plc_url
    finally:
        for api in (api_a, api_b):
            api.close()
            api.server.stop()
            assert "unhandled error" not in api.server.log()


def _plc(plc_url: str, did: str, suffix: str = "/data") -> dict:
    return httpx.get(f"{plc_url}/{did}{suffix}", timeout=30).json()


def _moved_to_b(api_a: Api, api_b: Api, name: str) -> tuple[dict, dict]:
    """An account on A and its deactivated twin on B (createAccount with the DID)."""
    acct = ok(api_a.post("com.atproto.server.createAccount", {
        "handle": f"{name}.a.test", "email": f"{name}@example.com", "password": PASSWORD}))
    token = ok(api_a.get("com.atproto.server.getServiceAuth", token=acct["accessJwt"],
                         aud=api_b.service_did, lxm="com.atproto.server.createAccount",
                         exp=int(time.time()) + 600))["token"]
    twin = ok(api_b.post("com.atproto.server.createAccount", {
        "did": acct["did"], "handle": f"{name}.b.test", "email": f"{name}-b@example.com",
        "password": PASSWORD}, token=token))
    return acct, twin


def _plc_token(api: Api, acct: dict, address: str) -> str:
    ok(api.post("com.atproto.identity.requestPlcOperationSignature",
                token=acct["accessJwt"]))
    return spooled_token(api.server.data_dir, address)


def test_sign_refusals(pdses):
    api_a, api_b, plc_url = pdses
    acct, twin = _moved_to_b(api_a, api_b, "signer")
    before = _plc(plc_url, acct["did"])
    sign = "com.atproto.identity.signPlcOperation"
    err(api_a.post(sign, {}, token=acct["accessJwt"]), 400, "InvalidRequest")
    err(api_a.post(sign, {"token": "AAAAA-BBBBB"}, token=acct["accessJwt"]), 400,
        "InvalidToken")
    token = _plc_token(api_a, acct, "signer@example.com")
    err(api_a.post(sign, {"token": token, "services": {"atproto_pds": "nope"}},
                   token=acct["accessJwt"]), 400, "InvalidRequest")
    # B can't sign: its rotation key is not the DID's (yet).
    b_token = _plc_token(api_b, twin, "signer-b@example.com")
    err(api_b.post(sign, {"token": b_token}, token=twin["accessJwt"]), 400, "InvalidRequest")
    assert _plc(plc_url, acct["did"]) == before


def test_sign_and_submit(pdses):
    api_a, api_b, plc_url = pdses
    acct, twin = _moved_to_b(api_a, api_b, "switcher")
    did = acct["did"]
    creds = ok(api_b.get("com.atproto.identity.getRecommendedDidCredentials",
                         token=twin["accessJwt"]))
    last = _plc(plc_url, did, "/log/last")
    token = _plc_token(api_a, acct, "switcher@example.com")
    op = ok(api_a.post("com.atproto.identity.signPlcOperation", {"token": token, **creds},
                       token=acct["accessJwt"]))["operation"]
    assert op["prev"] == plc_op_cid(last) and op["type"] == "plc_operation"
    assert {k: op[k] for k in creds} == creds
    # The token was spent.
    err(api_a.post("com.atproto.identity.signPlcOperation", {"token": token, **creds},
                   token=acct["accessJwt"]), 400, "InvalidToken")

    submit = "com.atproto.identity.submitPlcOperation"
    before = _plc(plc_url, did)
    other_key = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
    wrong = {
        "another endpoint": {**op, "services": {"atproto_pds": {
            "type": "AtprotoPersonalDataServer", "endpoint": "https://elsewhere.example"}}},
        "another signing key": {**op, "verificationMethods": {"atproto": other_key}},
        "not our rotation key": {**op, "rotationKeys": [other_key]},
        "another handle": {**op, "alsoKnownAs": ["at://someone.b.test"]},
        "not an operation": {"type": "plc_tombstone", "prev": op["prev"], "sig": op["sig"]},
    }
    for what, bad in wrong.items():
        answer = err(api_b.post(submit, {"operation": bad}, token=twin["accessJwt"]), 400,
                     "InvalidRequest")
        assert answer["message"], what
    # A signature that doesn't verify: the directory refuses it.
    err(api_b.post(submit, {"operation": {**op, "sig": op["sig"][:-4] + "AAAA"}},
                   token=twin["accessJwt"]), 400, "InvalidRequest")
    # A can't submit it: it doesn't name A.
    err(api_a.post(submit, {"operation": op}, token=acct["accessJwt"]), 400,
        "InvalidRequest")
    assert _plc(plc_url, did) == before

    ok(api_b.post(submit, {"operation": op}, token=twin["accessJwt"]))
    after = _plc(plc_url, did)
    assert after["services"]["atproto_pds"]["endpoint"] == \
        f"http://localhost:{api_b.server.port}"
    assert after["rotationKeys"] == creds["rotationKeys"]
    status = ok(api_b.get("com.atproto.server.checkAccountStatus", token=twin["accessJwt"]))
    assert status["validDid"] is True
    # A's rotation key is gone from the DID: A can't sign for it any more.
    token = _plc_token(api_a, acct, "switcher@example.com")
    err(api_a.post("com.atproto.identity.signPlcOperation", {"token": token},
                   token=acct["accessJwt"]), 400, "InvalidRequest")
