"""Every XRPC method the PDS serves checks its input against its lexicon before the
handler runs: a missing required parameter or body field, a value of the wrong type and
an out-of-range one are each answered 400 `InvalidRequest`, with the reference's message
naming the parameter (`Params/limit can not be greater than 100`, `Input must have the
property "repo"`), and change nothing on disk.

The cases are drawn from the method registry and each method's official lexicon (the
`lexrpc` documents), not from a hand-written list: a method added to the registry is
covered the day it is added."""

from __future__ import annotations

import base64
import importlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from server_util import Account, Api, api_fixture, diff_snapshots, err, snapshot

from pds.lexicon import official
from pds.lexicon.compiler import full_ref
from pds.lexicon.validate import method_def
from pds.services.auth import AuthKind

for _name in ("actor", "admin", "identity", "repo", "server", "sync"):
    importlib.import_module(f"pds.xrpc.{_name}")  # every handler registers itself
from pds.xrpc import registry  # noqa: E402

api = api_fixture()
DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
CID = "bafyreibcwoiemnvsleiph4pljrvq5vntcvm7ns2odgvv7cj2axpiqcm3jy"
# A value of each lexicon string format that passes it (for the parameters not under test).
GOOD_FORMAT = {"did": DID, "at-identifier": DID, "handle": "alice.test", "nsid": "a.b.c",
               "record-key": "self", "cid": CID, "tid": "3jzfcijpj2z2a",
               "at-uri": f"at://{DID}/a.b.c/self", "datetime": "2030-01-01T00:00:00Z",
               "uri": "https://example.com", "language": "en"}


@dataclass(frozen=True)
class Case:
    nsid: str
    where: str          # "Params" | "Input"
    name: str | None    # the field under test (None: everything left out)
    value: Any          # what is sent for it
    message: str        # what the answer's message must contain

    def __str__(self) -> str:
        return f"{self.nsid} {self.where}/{self.name}={str(self.value)[:20]}"


def _resolved(nsid: str, d: dict) -> dict:
    """A property's definition, a `ref` followed to what it names."""
    if d.get("type") == "ref":
        target = official().get_def(full_ref(d["ref"], nsid))
        return target if target is not None else d
    return d


def _good(nsid: str, d: dict) -> Any:
    d = _resolved(nsid, d)
    kind = d.get("type")
    if kind == "string":
        if isinstance(d.get("enum"), list):
            return d["enum"][0]
        return GOOD_FORMAT.get(d.get("format") or "", "x")
    if kind == "integer":
        return max(d.get("minimum", 1), 1)
    if kind == "array":
        return [_good(nsid, d.get("items", {}))]
    return {"integer": 1, "boolean": True}.get(str(kind), {})


def _bad_values(nsid: str, where: str, name: str, d: dict) -> list[tuple[Any, str]]:
    """(value, message) pairs that the lexicon refuses for one property: the wrong type,
    and beyond a range or a length."""
    d = _resolved(nsid, d)
    path, kind = f"{where}/{name}", d.get("type")
    out: list[tuple[Any, str]] = []
    if kind == "integer":
        out.append(("ten" if where == "Params" else "10", f"{path} must be an integer"))
        if "maximum" in d:
            out.append((d["maximum"] + 1, f"{path} can not be greater than {d['maximum']}"))
        if "minimum" in d:
            out.append((d["minimum"] - 1, f"{path} can not be less than {d['minimum']}"))
    elif kind == "boolean":
        out.append(("maybe", f"{path} must be a boolean"))
    elif kind == "string" and where == "Input":
        out.append((12, f"{path} must be a string"))
    if kind == "string" and isinstance(d.get("maxLength"), int) and d["maxLength"] < 10000:
        out.append(("a" * (d["maxLength"] + 1), f"{path} must not be longer than"))
    if kind == "string" and d.get("format") in GOOD_FORMAT and d.get("format") != "uri":
        out.append(("not valid!", f"{path} must be a"))
    if kind == "array" and where == "Input":
        out.append(("not a list", f"{path} must be an array"))
    if kind == "object" and where == "Input":
        out.append((7, f"{path} must be an object"))
    return out


def _schema(nsid: str, where: str) -> dict:
    d = method_def(official(), nsid) or {}
    if where == "Params":
        return d.get("parameters") or {}
    body = d.get("input") or {}
    schema = body.get("schema") or {} if body.get("encoding") == "application/json" else {}
    return _resolved(nsid, schema)


def _cases() -> list[Case]:
    cases: list[Case] = []
    for nsid, method in sorted(registry.METHODS.items()):
        if method.kind == "procedure" and method.body != "json":
            continue  # a raw body (a blob, a CAR): no JSON to check
        where = "Params" if method.kind == "query" else "Input"
        schema = _schema(nsid, where)
        props = schema.get("properties") or {}
        if schema.get("required"):
            cases.append(Case(nsid, where, None, None, f'{where} must have the property "'))
        for name, d in props.items():
            for value, message in _bad_values(nsid, where, name, d):
                cases.append(Case(nsid, where, name, value, message))
    return cases


CASES = _cases()


def test_the_table_covers_the_registry() -> None:
    covered = {c.nsid for c in CASES}
    assert len(CASES) > 80
    # every method whose lexicon has a required parameter or field, or a typed one
    for nsid in ("com.atproto.repo.createRecord", "com.atproto.repo.listRecords",
                 "com.atproto.sync.listBlobs", "com.atproto.admin.getAccountInfos",
                 "com.atproto.server.createAccount", "app.bsky.actor.putPreferences"):
        assert nsid in covered
    for rule in ("must have the property", "must be an integer", "must be a boolean",
                 "must be a string", "can not be greater than", "can not be less than",
                 "must not be longer than", "must be an array", "must be an object"):
        assert any(rule in c.message for c in CASES), rule


@pytest.fixture(scope="module")
def creds(api: Api) -> dict[AuthKind, dict[str, str]]:
    acct: Account = api.create_account("tabular")
    access = {"Authorization": f"Bearer {acct.access}"}
    admin = base64.b64encode(f"admin:{api.server.admin_password}".encode()).decode()
    return {AuthKind.ACCESS: access, AuthKind.ACCESS_FULL: access,
            AuthKind.ACCESS_OR_SERVICE: access,
            AuthKind.REFRESH: {"Authorization": f"Bearer {acct.refresh}"},
            AuthKind.ADMIN: {"Authorization": f"Basic {admin}"}}


def _send(api: Api, creds: dict, case: Case) -> Any:
    method = registry.METHODS[case.nsid]
    headers = creds.get(method.auth, {})
    schema = _schema(case.nsid, case.where)
    props = schema.get("properties") or {}
    # The field under test first (a body's fields are checked in the order sent), then
    # good values of the other required ones.
    values: dict[str, Any] = {}
    if case.name is not None:
        values[case.name] = case.value
        for name in schema.get("required") or ():
            values.setdefault(name, _good(case.nsid, props.get(name, {})))
    if case.where == "Params":
        parts = [f"{quote(k)}={quote(str(x))}" for k, v in values.items()
                 for x in (v if isinstance(v, list) else [v])]
        return api.http.get(f"/xrpc/{case.nsid}?{'&'.join(parts)}", headers=headers)
    return api.http.post(f"/xrpc/{case.nsid}", content=json.dumps(values).encode(),
                         headers={**headers, "Content-Type": "application/json"})


def test_every_method_refuses_what_its_lexicon_refuses(api: Api, creds: dict) -> None:
    root = api.server.data_dir
    before = snapshot(root)
    failures = []
    for case in CASES:
        resp = _send(api, creds, case)
        try:
            body = err(resp, 400, "InvalidRequest")
            assert case.message in body["message"], body["message"]
        except AssertionError as e:
            failures.append(f"{case}: {e}"[:300])
    assert not failures, f"{len(failures)} of {len(CASES)}:\n" + "\n".join(failures)
    assert not diff_snapshots(before, snapshot(root))
