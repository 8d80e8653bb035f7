"""`pds account migrate-in`: the client side of the official account migration, run by the
operator of the PDS the account moves into (see `guides/account-migration`):

 1. sign in to the old PDS (its emailed sign-in code when it asks for one);
 2. getServiceAuth there (aud: this PDS's DID, lxm createAccount), createAccount here
    with the DID (an invite made here when sign-up needs one): the account is
    created deactivated;
 3. getRepo there, importRepo here; listMissingBlobs here, getBlob there and uploadBlob
    here for each; getPreferences there, putPreferences here;
 4. getRecommendedDidCredentials here, requestPlcOperationSignature there (a code is
    emailed to the account), signPlcOperation there, submitPlcOperation here;
 5. activateAccount here, deactivateAccount there.

Both PDSes are reached over XRPC only, this one at its public URL (or `--pds-url`): the
command uses nothing of the server's insides, so what it does is what any migration
client could do. Each step first looks at what is already done (the account here, the
repo's commit, the missing blobs, the PLC data, the account's status), so a run that was
interrupted at any point is resumed by running it again; `migrate_state` keeps the rest.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from ..config import Settings
from .common import CliError
from .migrate_http import Xrpc, XrpcFailure, file_chunks
from .migrate_identity import plc_data
from .migrate_state import MigrationState, StateFiles

CREATE = "com.atproto.server.createAccount"
# Read-only preferences the old PDS computes (putPreferences refuses or drops them).
COMPUTED_PREFS = {"app.bsky.actor.defs#declaredAgePref"}
SERVICE_AUTH_SECONDS = 600
BLOB_PAGE = 500


class Bar(Protocol):
    def update(self, n: int) -> None: ...


class Ui(Protocol):
    """How the flow talks to the operator."""

    def say(self, text: str) -> None: ...

    def ask(self, text: str, hide: bool = False, confirm: bool = False) -> str: ...

    def bar(self, label: str, length: int) -> AbstractContextManager[Bar]: ...


@dataclass
class Options:
    """What the operator said on the command line (None: ask, or decide)."""

    who: str
    old_password: str | None = None
    new_password: str | None = None
    handle: str | None = None
    email: str | None = None
    old_pds: str | None = None
    pds_url: str | None = None


def loopback(bind: str) -> tuple[str, httpx.BaseTransport | None]:
    """The URL (and transport) that reaches `pds serve` directly at PDS_BIND: past nginx,
    its body size limit and its rate limits."""
    if bind.startswith("unix:"):
        return "http://localhost", httpx.HTTPTransport(uds=bind[len("unix:"):])
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}", None


class Here:
    """This PDS, over HTTP: the account's calls (`xrpc`) and the admin's (`admin`). It is
    reached at `url` if given, else at PDS_BIND directly when a server answering as this
    data dir's PDS listens there, else at its public URL."""

    def __init__(self, settings: Settings, url: str | None) -> None:
        candidates = [(url, None)] if url else [loopback(settings.bind),
                                               (settings.public_url, None)]
        tried = []
        for base, transport in candidates:
            self.url = base.rstrip("/")
            self.xrpc = Xrpc(self.url, f"this PDS ({self.url})", transport)
            try:
                self.server = self.xrpc.get("com.atproto.server.describeServer")
                if self.server.get("did") == settings.service_did:
                    break
                tried.append(f"{self.url} is {self.server.get('did')}")
            except XrpcFailure as e:
                tried.append(str(e))
            self.xrpc.close()
        else:
            raise CliError(f"this PDS ({settings.service_did}) doesn't answer: "
                           f"{'; '.join(tried)} (is `pds serve` running? --pds-url says "
                           "where)")
        self.admin = Xrpc(self.url, f"this PDS ({self.url})", transport,
                          auth=httpx.BasicAuth("admin", settings.admin_password))

    def close(self) -> None:
        self.xrpc.close()
        self.admin.close()

    def has_account(self, did: str) -> bool:
        """Whether the DID has an account here (in any state)."""
        return bool(self.admin.get("com.atproto.admin.getAccountInfos", dids=did)["infos"])

    def invite(self) -> str:
        """A one-use invite code, made with the admin password."""
        return str(self.admin.post("com.atproto.server.createInviteCode",
                                   {"useCount": 1})["code"])

    def status(self) -> dict[str, Any]:
        return dict(self.xrpc.get("com.atproto.server.checkAccountStatus"))


def default_handle(old_handle: str | None, did: str, domains: list[str]) -> str:
    """The handle an account gets here unless the operator names one: its old one if it
    is already under one of our domains, else its first label under our first domain."""
    if not domains:
        raise CliError("this PDS offers no handle domain: name the handle with --handle")
    if old_handle and any(old_handle.endswith(d) for d in domains):
        return old_handle
    label = (old_handle or did.rsplit(":", 1)[1]).split(".")[0]
    return label + domains[0]


def sign_in(client: Xrpc, did: str, password: str, ui: Ui) -> dict[str, Any]:
    """createSession on the old PDS, with the emailed sign-in code if it asks for one;
    the client carries the session's token afterwards."""
    body: dict[str, Any] = {"identifier": did, "password": password}
    for _ in range(3):
        try:
            session = client.post("com.atproto.server.createSession", body)
            client.signed_in(session)
            return dict(session)
        except XrpcFailure as e:
            if e.name == "AuthFactorTokenRequired":
                body["authFactorToken"] = ui.ask(
                    "The old PDS has emailed a sign-in code to the account's address; code")
                continue
            if e.status == 401:
                raise CliError(f"{client.where} refused the sign-in of {did}: "
                               f"{e.message or e.name}") from None
            raise
    raise CliError(f"{client.where} refused the sign-in code three times")


class Migration:
    """One run of the flow, for one account."""

    def __init__(self, settings: Settings, opts: Options, ui: Ui, here: Here,
                 state: MigrationState, files: StateFiles, src: Xrpc) -> None:
        self.settings, self.opts, self.ui = settings, opts, ui
        self.here, self.state, self.files = here, state, files
        self.src = src  # the old PDS, signed in (`sign_in`)
        self.did = state.did

    def run(self) -> None:
        """Every step, each skipped when it is already done; the state is forgotten at
        the end."""
        self.files.save(self.state)
        self.ensure_account()
        if self.here.status().get("activated"):
            # Active here, it has commits of its own (activation makes one): the old
            # repo must not be imported over them. Only the old PDS's side is left.
            self.ui.say("account: active here already")
        else:
            self.copy_repo()
            self.copy_blobs()
            self.copy_preferences()
            self.switch_plc()
            self.here.xrpc.post("com.atproto.server.activateAccount")
            self.ui.say("account: activated here")
        self.deactivate_old()
        self.files.remove(self.did)

    def _new_password(self, confirm: bool) -> str:
        return self.opts.new_password or self.ui.ask(
            f"Password of {self.state.handle} on this PDS", hide=True, confirm=confirm)

    def ensure_account(self) -> None:
        """createAccount here with the DID (deactivated), or sign in to the one a previous
        run made."""
        here, st = self.here, self.state
        if here.has_account(self.did):
            self.ui.say(f"account: already here ({self.did}); signing in")
            try:
                session = here.xrpc.post("com.atproto.server.createSession", {
                    "identifier": self.did, "password": self._new_password(False)})
            except XrpcFailure as e:
                raise CliError(f"the account {self.did} is here already, and {e.message or e.name}"
                               " (give the password chosen on the first run)") from None
            here.xrpc.signed_in(session)
            return
        password = self._new_password(True)
        body: dict[str, Any] = {"did": self.did, "handle": st.handle, "email": st.email,
                                "password": password}
        if here.server.get("inviteCodeRequired"):
            body["inviteCode"] = here.invite()
        token = self.src.get("com.atproto.server.getServiceAuth", aud=here.server["did"],
                             lxm=CREATE, exp=int(time.time()) + SERVICE_AUTH_SECONDS)["token"]
        self.ui.say(f"account: creating {st.handle} ({self.did}) here, deactivated")
        made = here.xrpc.post(CREATE, body, headers={"Authorization": f"Bearer {token}"})
        here.xrpc.signed_in(made)

    def copy_repo(self) -> None:
        """getRepo there, importRepo here, unless this PDS has the same commit already."""
        latest = self.src.get("com.atproto.sync.getLatestCommit", did=self.did)
        if self.here.status().get("repoCommit") == latest["cid"]:
            self.ui.say(f"repo: already here (rev {latest['rev']})")
            return
        car = self.files.car_path(self.did)
        self._download_repo(car)
        size = car.stat().st_size
        with self.ui.bar(f"repo: importing {size} bytes", size) as bar:
            self.here.xrpc.post_bytes("com.atproto.repo.importRepo",
                                      file_chunks(car, bar.update),
                                      "application/vnd.ipld.car", size)
        car.unlink()
        self.ui.say(f"repo: imported (rev {latest['rev']})")

    def _download_repo(self, car: Path) -> None:
        """The old PDS's repo CAR, into `car` (0600)."""
        fd = os.open(car, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            shown = [0]

            def progress(done: int, total: int | None) -> None:
                if done - shown[0] >= 1024 * 1024 or done == total:
                    shown[0] = done
                    self.ui.say(f"repo: downloaded {done}" + (f"/{total}" if total else "")
                                + " bytes")
            self.src.download("com.atproto.sync.getRepo", out, progress, did=self.did)
            out.flush()
            os.fsync(out.fileno())

    def missing_blobs(self) -> list[str]:
        """Every blob the imported records name that this PDS lacks."""
        cids: list[str] = []
        cursor = None
        while True:
            page = self.here.xrpc.get("com.atproto.repo.listMissingBlobs", limit=BLOB_PAGE,
                                      cursor=cursor)
            cids += [b["cid"] for b in page.get("blobs", [])]
            cursor = page.get("cursor")
            if not cursor or not page.get("blobs"):
                return list(dict.fromkeys(cids))

    def copy_blobs(self) -> None:
        """getBlob there, uploadBlob here, for each missing blob. One the old PDS doesn't
        have (or sends other bytes for) is reported and skipped, as the reference's
        clients do; any other failure stops the run, which a second run resumes."""
        missing = self.missing_blobs()
        if not missing:
            self.ui.say("blobs: none missing")
            return
        skipped: list[str] = []
        with self.ui.bar(f"blobs: copying {len(missing)}", len(missing)) as bar:
            for cid in missing:
                problem = self._copy_blob(cid)
                if problem:
                    skipped.append(f"warning: blob {cid}: {problem}; skipped")
                bar.update(1)
        self.ui.say(f"blobs: copied {len(missing) - len(skipped)}")
        for line in skipped:
            self.ui.say(line)

    def _copy_blob(self, cid: str) -> str | None:
        """Copy one blob; what was wrong with it, if it could not be copied."""
        try:
            data, ctype = self.src.fetch_bytes("com.atproto.sync.getBlob",
                                               self.settings.blob_limit, did=self.did, cid=cid)
        except XrpcFailure as e:
            if e.status not in (400, 404):  # unreachable, overloaded, rate limited: retry
                raise
            return f"the old PDS does not have it ({e.name})"
        try:
            out = self.here.xrpc.post_bytes("com.atproto.repo.uploadBlob", data, ctype,
                                            len(data))
        except XrpcFailure as e:
            if e.status in (413, 429):  # the account's quota or upload rate here
                raise CliError(f"{e} (PDS_BLOB_QUOTA and PDS_BLOB_UPLOAD_RATE limit an "
                               "account's blobs: raise them, or run this again later to go "
                               "on)") from None
            raise
        got = ((out or {}).get("blob") or {}).get("ref", {}).get("$link")
        return None if got == cid else f"the old PDS sent other bytes ({got})"

    def copy_preferences(self) -> None:
        """The account's app preferences, as the old PDS has them (less computed ones)."""
        prefs = self.src.get("app.bsky.actor.getPreferences").get("preferences", [])
        kept = [p for p in prefs if isinstance(p, dict) and p.get("$type") not in COMPUTED_PREFS]
        self.here.xrpc.post("app.bsky.actor.putPreferences", {"preferences": kept})
        self.ui.say(f"preferences: copied {len(kept)}")

    def switch_plc(self) -> None:
        """Point the DID's PLC document here: signed by the old PDS (with the emailed
        code), submitted by this one. A signed operation is kept in the state until it is
        submitted, so the single-use code is never needed twice."""
        wanted = self.here.xrpc.get("com.atproto.identity.getRecommendedDidCredentials")
        if plc_names(plc_data(self.did, self.settings.plc_url), wanted):
            self.ui.say("PLC: the DID document names this PDS already")
            return
        if self.state.plc_operation is not None and self._submit(self.state.plc_operation):
            return
        self.src.post("com.atproto.identity.requestPlcOperationSignature")
        code = self.ui.ask(f"The old PDS has emailed a confirmation code to {self.state.email}"
                           " (to change the DID document); code")
        op = self.src.post("com.atproto.identity.signPlcOperation",
                           {"token": code.strip(), **wanted})["operation"]
        self.state.plc_operation = op
        self.files.save(self.state)
        if not self._submit(op):
            raise CliError("this PDS refused the PLC operation the old PDS signed")

    def _submit(self, op: dict[str, Any]) -> bool:
        """submitPlcOperation here; False if it is refused (stale: sign a new one)."""
        try:
            self.here.xrpc.post("com.atproto.identity.submitPlcOperation", {"operation": op})
        except XrpcFailure as e:
            if e.status == 0 or e.status >= 500:
                raise
            self.ui.say(f"PLC: the signed operation was refused ({e.message or e.name})")
            self.state.plc_operation = None
            self.files.save(self.state)
            return False
        self.state.plc_operation = None
        self.files.save(self.state)
        self.ui.say("PLC: the DID document now names this PDS")
        return True

    def deactivate_old(self) -> None:
        if self.src.get("com.atproto.server.getSession").get("active") is False:
            self.ui.say("old PDS: the account is deactivated there already")
            return
        self.src.post("com.atproto.server.deactivateAccount", {})
        self.ui.say("old PDS: account deactivated")


def plc_names(data: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether PLC data already holds what this PDS recommends (endpoint, signing key,
    its rotation key, the handle)."""
    services = data.get("services") or {}
    return bool(
        (services.get("atproto_pds") or {}).get("endpoint")
        == wanted["services"]["atproto_pds"]["endpoint"]
        and (data.get("verificationMethods") or {}).get("atproto")
        == wanted["verificationMethods"]["atproto"]
        and set(wanted["rotationKeys"]) <= set(data.get("rotationKeys") or [])
        and (data.get("alsoKnownAs") or [None])[0] == wanted["alsoKnownAs"][0])

