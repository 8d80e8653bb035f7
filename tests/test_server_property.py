"""Property: no XRPC method answers hostile input with a 5xx, and a refused request changes
nothing on disk.

For every method in the registry and every parameter it takes, hypothesis draws values
that are over-long, not UTF-8, hold a NUL, or have the wrong type, and sends each (the
other parameters valid) to a real `pds serve --workers 2`, with a valid session, refresh
token or admin password where the method needs one. Every answer must be below 500 and,
when it is a refusal, leave the data dir as it was (snapshot before and after each
request; rate-limit counters, the event log, logs and staging files aside). Values of the
wrong type must be refused outright.

The parameters come from the official lexicons (the JSON files the `lexrpc` package
ships), joined with what the handlers read (`call.param("...")`, `call.field("...")`...,
found in their source), so a parameter a handler reads that the lexicon lacks is covered
too; without lexrpc, from the handlers alone.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_util import Api, diff_snapshots, ok, running_server, snapshot

from pds.services.auth import AuthKind

for _name in ("actor", "admin", "email", "identity", "repo", "server", "sync"):
    importlib.import_module(f"pds.xrpc.{_name}")  # every handler registers itself
from pds.xrpc import registry  # noqa: E402

EXAMPLES = 5  # values per (method, parameter)
COLL = "com.example.note"
CID = "bafyreibcwoiemnvsleiph4pljrvq5vntcvm7ns2odgvv7cj2axpiqcm3jy"
TID = "3jzfcijpj2z2a"
# Methods whose input is the raw body (a blob, a CAR), not parameters: not drawn here.
RAW_BODY = {n for n, m in registry.METHODS.items() if m.kind == "procedure" and m.body == "raw"}
# Methods that answer every call 501 MethodNotImplemented (what the PDS does not do).
UNIMPLEMENTED = {"com.atproto.server.reserveSigningKey", "com.atproto.repo.importRepo"}
# Parameters sent (valid) beyond what the lexicon requires, so that the checks after the
# one they would fail are reached: a sign-up without an email stops at it.
ALSO_SENT = {"com.atproto.server.createAccount": {"email", "password"}}
# Methods that change an account's state when they succeed: run after all the others.
LAST = ("com.atproto.admin.", "com.atproto.server.deactivateAccount",
        "com.atproto.server.deleteAccount", "com.atproto.server.requestAccountDelete",
        "com.atproto.identity.updateHandle")


# --- the parameters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "string"        # lexicon type: string, integer, boolean, array, object...
    format: str | None = None   # lexicon string format: did, handle, nsid, cid...
    required: bool = False
    max_length: int | None = None
    items: str | None = None    # an array's item type


def _lexicon_dir() -> Path | None:
    spec = importlib.util.find_spec("lexrpc")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "lexicons"
    return root if root.is_dir() else None


LEXICONS = _lexicon_dir()


def lexicon_params(nsid: str) -> dict[str, Param]:
    if LEXICONS is None:
        return {}
    path = LEXICONS.joinpath(*nsid.split(".")).with_suffix(".json")
    if not path.exists():
        return {}
    main = json.loads(path.read_text())["defs"]["main"]
    schema = main.get("parameters") or (main.get("input") or {}).get("schema") or {}
    required = set(schema.get("required", []))
    out = {}
    for name, d in schema.get("properties", {}).items():
        d = _resolve(nsid, d)
        kind = "object" if d.get("type") in ("ref", "union", "unknown") else d.get("type")
        out[name] = Param(name, kind or "string", d.get("format"), name in required,
                          d.get("maxLength"), (d.get("items") or {}).get("type"))
    return out


def _resolve(nsid: str, d: dict) -> dict:
    """A `ref` property's definition (another lexicon's, or this one's `#name`)."""
    if d.get("type") != "ref" or LEXICONS is None:
        return d
    where, _, name = d["ref"].partition("#")
    path = LEXICONS.joinpath(*(where or nsid).split(".")).with_suffix(".json")
    if not path.exists():
        return d
    target = json.loads(path.read_text())["defs"].get(name or "main", {})
    return target if target.get("type") in ("array", "string", "integer", "boolean") else d


_READERS = {"param": "string", "param_int": "integer", "param_bool": "boolean",
            "param_list": "array", "field": "string"}
_KINDS = {"dict": "object", "list": "array", "int": "integer", "bool": "boolean"}


def handler_params(method: registry.Method) -> dict[str, Param]:
    """The parameters a handler reads, from its source: `call.param("x")`,
    `call.field("x", kind=dict)`, `call.body.get("x")`, `call.body["x"]`..."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(method.handler)))
    out: dict[str, Param] = {}
    for node in ast.walk(tree):
        name, kind = None, "string"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str):
            attr = node.func.attr
            if attr in _READERS:
                name, kind = node.args[0].value, _READERS[attr]
                for kw in node.keywords:
                    if kw.arg == "kind" and isinstance(kw.value, ast.Name):
                        kind = _KINDS.get(kw.value.id, kind)
            elif attr == "get" and ast.unparse(node.func.value).endswith("body"):
                name = node.args[0].value
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("body") \
                and isinstance(node.slice, ast.Constant):
            name = node.slice.value
        if isinstance(name, str) and name not in out:
            out[name] = Param(name, kind)
    return out


def method_params(nsid: str) -> list[Param]:
    found = lexicon_params(nsid)
    for name, p in handler_params(registry.METHODS[nsid]).items():
        found.setdefault(name, p)
    return list(found.values())


def _order(nsid: str) -> tuple[bool, str]:
    return nsid.startswith(LAST), nsid


CASES = [(nsid, p) for nsid in sorted(registry.METHODS, key=_order) if nsid not in RAW_BODY
         for p in method_params(nsid)]
NO_PARAMS = sorted(n for n in registry.METHODS if n not in RAW_BODY
                   and not method_params(n))


# --- good values (the parameters not under test) ----------------------------------------------


def good_value(nsid: str, p: Param, ctx: dict[str, str]) -> Any:
    """A valid value for `p`, naming the test's accounts: its own (`did`), or for the
    admin's methods a second account (`victim`), so they can't disable the first."""
    did = ctx["victim"] if nsid.startswith("com.atproto.admin.") or \
        nsid == "com.atproto.server.deleteAccount" else ctx["did"]
    special = {
        "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
        "record": {"$type": COLL, "text": "x"}, "writes": [], "preferences": [],
        "takedown": {"applied": False}, "collection": COLL, "email": "x@example.com",
        "aud": ctx["did"], "useCount": 1, "codeCount": 1, "cids": [CID], "dids": [did],
        "password": "not the password", "handle": ctx["handle"],
    }
    if p.name in special:
        return special[p.name]
    by_format = {"did": did, "at-identifier": did, "handle": ctx["handle"], "nsid": COLL,
                 "record-key": "self", "cid": CID, "tid": TID, "at-uri":
                 f"at://{did}/{COLL}/self", "datetime": "2030-01-01T00:00:00.000Z"}
    if p.format in by_format:
        return by_format[p.format]
    return {"integer": 1, "boolean": False, "array": [], "object": {}}.get(p.type, "x")


# --- hostile values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    kind: str     # over-long | non-utf8 | nul | wrong-type
    value: Any    # JSON: the value (or `raw` bytes); query: the encoded values
    raw: bytes | None = None


_PREFIX = {"did": "did:web:", "at-identifier": "did:web:", "nsid": "com.example.",
           "handle": "", "at-uri": "at://did:web:"}


def _long(p: Param) -> st.SearchStrategy[str]:
    """Over-long strings, syntactically valid where the format allows (a DID of 300
    characters is a DID; it just can't be a file name)."""
    prefix = _PREFIX.get(p.format or "", "")
    low = max(256, (p.max_length or 0) + 1)
    return st.integers(low, max(low, 2500)).map(lambda n: prefix + "a" * n)


def json_bad(p: Param) -> st.SearchStrategy[Bad]:
    wrong: list[Any] = [0, -1, 1.5, True, [], ["x"], {}, {"a": 1}, 2**70, [[[]]], "x"]
    keep = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}
    right = keep.get(p.type)
    wrong = [v for v in wrong if right is None or not isinstance(v, right)
             or (right is int and isinstance(v, bool))]
    prefix = _PREFIX.get(p.format or "", "")
    strings = st.one_of(
        _long(p).map(lambda s: Bad("over-long", s)),
        st.sampled_from(["\ud800", "a\udfffb", prefix + "\ud800"]).map(
            lambda s: Bad("non-utf8", s)),
        st.just(Bad("non-utf8", None, b'"' + prefix.encode() + b'\xff\xfe"')),
        st.sampled_from(["a\x00b", "\x00", prefix + "a\x00b"]).map(lambda s: Bad("nul", s)),
    )
    typed = st.sampled_from(wrong).map(lambda v: Bad("wrong-type", v))
    if p.type == "object":  # a good shape with a hostile string inside
        strings = st.sampled_from([{"$type": COLL, "text": "\ud800"}, {"$type": "\x00"},
                                   {"$type": COLL, "a" * 300: "a" * 300}]).map(
            lambda v: Bad("nested", v))
    if p.type == "array":
        strings = st.sampled_from([["\ud800"], ["a\x00b"], ["did:web:" + "a" * 300]]).map(
            lambda v: Bad("nested", v))
    return st.one_of(strings, typed)


def query_bad(p: Param) -> st.SearchStrategy[Bad]:
    prefix = quote(_PREFIX.get(p.format or "", ""), safe="")
    wrong = {"integer": ["abc", "1.5", "-1", "9" * 30], "boolean": ["maybe", "1"]}
    strategies = [
        _long(p).map(lambda s: Bad("over-long", [quote(s, safe="")])),
        st.sampled_from(["%FF%FE", "a%C3%28b", "%ED%A0%80"]).map(
            lambda s: Bad("non-utf8", [prefix + s])),
        st.sampled_from(["a%00b", "%00"]).map(lambda s: Bad("nul", [prefix + s])),
        # Empty, or repeated (a list where one value is wanted): read as absent, or as
        # the last one; not refused, but never a 5xx either.
        st.just(Bad("empty", [""])),
        st.just(Bad("repeated", ["a", "b"])),
    ]
    if p.type in wrong:  # on the wire every value is a string: only these can be mistyped
        strategies.append(st.sampled_from(wrong[p.type]).map(
            lambda s: Bad("wrong-type", [s])))
    return st.one_of(*strategies)


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # No AppView or report service: offline, the methods that call one (getFeed) stop at
    # "No service configured" instead of a 502 from a network that isn't there.
    with running_server(tmp_path_factory.mktemp("prop"),
                        env={"PDS_RATE_LIMITS": "true", "PDS_BSKY_APP_VIEW_URL": "",
                             "PDS_REPORT_SERVICE_URL": ""}) as server:
        api = Api(server)
        me, victim = api.create_account("prop"), api.create_account("victim")
        ok(api.create_record(me, {"text": "hello"}, rkey="self"))
        client = httpx.Client(base_url=server.url, timeout=60)
        yield {"api": api, "client": client, "root": server.data_dir,
               "ctx": {"did": me.did, "handle": me.handle, "victim": victim.did},
               "auth": {"access": f"Bearer {me.access}", "refresh": f"Bearer {me.refresh}",
                        "admin": api.admin_headers()["Authorization"]},
               "log": []}
        client.close()
        api.close()


def _auth_header(kind: AuthKind, auth: dict[str, str]) -> dict[str, str]:
    if kind in (AuthKind.ACCESS, AuthKind.ACCESS_FULL, AuthKind.ACCESS_OR_SERVICE):
        return {"Authorization": auth["access"]}
    if kind == AuthKind.REFRESH:
        return {"Authorization": auth["refresh"]}
    if kind == AuthKind.ADMIN:
        return {"Authorization": auth["admin"]}
    return {}


def send(env: dict, nsid: str, p: Param, bad: Bad) -> httpx.Response:
    method = registry.METHODS[nsid]
    headers = _auth_header(method.auth, env["auth"])
    others = {q.name: good_value(nsid, q, env["ctx"]) for q in method_params(nsid)
              if (q.required or q.name in ALSO_SENT.get(nsid, ())) and q.name != p.name}
    if method.kind == "query":
        parts = [f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, vs in others.items()
                 for v in (vs if isinstance(vs, list) else [vs])]
        parts += [f"{quote(p.name, safe='')}={v}" for v in bad.value]
        return env["client"].get(f"/xrpc/{nsid}?{'&'.join(parts)}", headers=headers)
    body = json.dumps({**others, p.name: "\x01RAW\x01" if bad.raw else bad.value}).encode()
    if bad.raw is not None:
        body = body.replace(b'"\\u0001RAW\\u0001"', bad.raw)
    return env["client"].post(f"/xrpc/{nsid}", content=body,
                              headers={**headers, "Content-Type": "application/json"})


def _state(root: Path) -> dict:
    """The data dir, less what changes on its own: the export snapshots the maintenance
    rewrites (and so the mtimes of directories, which any file renamed in or out of them
    changes: a directory counts by its entries), and lock files, which the maintenance
    makes as it takes them. Rate-limit counters, the event log and tmp/'s staging files
    are not in the snapshot at all."""
    return {k: (True,) if v and v[0] else v for k, v in snapshot(root).items()
            if not k.endswith(("export.car", ".LOCK"))}


def check(env: dict, nsid: str, p: Param, bad: Bad) -> None:
    before = _state(env["root"])
    t0 = time.monotonic()
    r = send(env, nsid, p, bad)
    env["log"].append((nsid, p.name, bad.kind, r.status_code, time.monotonic() - t0))
    what = f"{nsid} {p.name}={bad.value!r:.120} ({bad.kind})"
    assert r.status_code < 500 or (nsid in UNIMPLEMENTED and r.status_code == 501), \
        f"{what}: {r.status_code} {r.text[:300]}"
    assert b"Traceback" not in r.content, what
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("error"), str), f"{what}: {r.text[:300]}"
        assert diff_snapshots(before, _state(env["root"])) == [], what
    else:
        assert bad.kind != "wrong-type", f"{what} was accepted: {r.text[:300]}"


@pytest.mark.parametrize("nsid, param", CASES, ids=[f"{n}:{p.name}" for n, p in CASES])
def test_hostile_parameter_values(env, nsid: str, param: Param) -> None:
    strategy = query_bad(param) if registry.METHODS[nsid].kind == "query" else \
        json_bad(param)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(bad: Bad) -> None:
        check(env, nsid, param, bad)

    run()


def test_coverage_is_every_method(env) -> None:
    """Every registered method is drawn on, or is listed as taking no parameters (or a
    raw body), and the lexicons were found (else only what handlers read is covered)."""
    covered = {n for n, _ in CASES}
    assert covered | set(NO_PARAMS) | RAW_BODY == set(registry.METHODS)
    assert LEXICONS is not None or not importlib.util.find_spec("lexrpc")
    sent = env["log"]
    print(f"\n{len(covered)} methods x {len(CASES)} parameters, {len(sent)} requests, "
          f"{sum(1 for s in sent if s[3] < 400)} accepted; no parameters: {NO_PARAMS}; "
          f"raw body: {sorted(RAW_BODY)}")
    for row in sent:
        if row[3] < 400:
            print("accepted:", *row[:4])
