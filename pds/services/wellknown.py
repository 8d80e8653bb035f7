"""The static well-known documents: `well-known/<host>/atproto-did` (a hosted handle's DID)
and `well-known/<host>/did.json` (a did:web document, and the PDS's own service DID
document under its host name), which the identity service writes (`Publisher`, a part of
`identity.Identity`) and nginx serves; read back here (`read_document`) for the app to
serve when no nginx fronts it.

No account's handle or did:web ever writes (or removes) in the PDS's own host
directory: the handle rules (`handles`) keep accounts off the name, and `Publisher`
refuses it too, so that a slip can't overwrite the service DID document.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..repo.did import (
    IdentityError,
    did_web_host,
    is_valid_host,
    make_did_document,
    make_service_did_document,
)
from ..repo.keys import PublicKey
from ..repo.syntax import is_valid_did, is_valid_handle
from ..store.files import ensure_dir, read_file, write_file
from .threads import blocking

if TYPE_CHECKING:
    from .context import AppContext

# A Host header as a directory name: no '/', and no '..' (checked too), so a lookup can
# never leave well-known/.
_HOST = re.compile(r"[a-z0-9.-]+(:[0-9]{1,5})?")


async def read_document(ctx: Any, host: str, name: str) -> bytes | None:
    """The document `name` published for `host` (as a Host header names it, lowercase),
    or None when there is none or `host` can't be a directory of ours."""
    if len(host) > 253 + 6 or not _HOST.fullmatch(host) or ".." in host:
        return None
    try:
        directory = ctx.data.well_known(host)
    except ValueError:  # too long to be a directory of ours
        return None
    return await blocking(read_file, directory / name)


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1).encode() + b"\n"


class Publisher:
    """The documents this PDS publishes under `well-known/` (blocking file work)."""

    ctx: AppContext

    def did_document(self, did: str, handle: str | None,
                     signing_key: PublicKey) -> dict[str, Any]:
        """The DID document of an account hosted here (PROTOCOL.md §5 shape)."""
        return make_did_document(did, handle, signing_key, self.ctx.settings.public_url)

    def well_known_dir(self, host: str) -> Path:
        """`<data>/well-known/<host>/` for a hostname (port allowed), checked so the path
        can't escape the well-known tree."""
        host = host.lower()
        if not is_valid_host(host):
            raise IdentityError(f"not a hostname: {host!r}")
        return self.ctx.data.well_known(host)

    def _is_service_host(self, host: str) -> bool:
        return host.lower() in (self.ctx.settings.hostname, self.ctx.settings.host_only)

    def _refuse_service_host(self, host: str) -> None:
        """An account's handle or did:web host is never the PDS's own: its service DID
        document lives there (the handle rules keep accounts off the name; this keeps a
        slip from overwriting it)."""
        if self._is_service_host(host):
            raise IdentityError(f"{host} is this PDS's own host name, not an account's")

    def _write_well_known(self, host: str, name: str, data: bytes) -> Path:
        directory = ensure_dir(self.well_known_dir(host))
        ensure_dir(self.ctx.data.tmp)
        path = directory / name
        write_file(path, data, self.ctx.data.tmp)
        return path

    def _handles_we_host(self, handle: str) -> bool:
        handle = handle.lower()
        return any(handle.endswith(d.lower()) and len(handle) > len(d)
                   for d in self.ctx.settings.handle_domains)

    def create_web_did(self, handle: str, signing_key: PublicKey) -> str:
        """Create `did:web:<handle>` for a handle under one of our handle domains, writing
        its document to `well-known/<handle>/did.json`. Returns the DID."""
        handle = handle.lower()
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        if not self._handles_we_host(handle):
            raise IdentityError(f"did:web is only offered under {self.ctx.settings.handle_domains}")
        did = "did:web:" + handle
        self.write_web_did_doc(did, handle, signing_key)
        return did

    def write_web_did_doc(self, did: str, handle: str | None, signing_key: PublicKey) -> Path:
        """(Re)write the document of a did:web account hosted here (after a handle or key
        change, too). Returns the file's path."""
        host = did_web_host(did)
        if host is None:
            raise IdentityError(f"not a hostname did:web: {did!r}")
        self._refuse_service_host(host)
        doc = self.did_document(did, handle, signing_key)
        return self._write_well_known(host, "did.json", _json_bytes(doc))

    def remove_web_did_doc(self, did: str) -> None:
        """Withdraw the document of a did:web account hosted here (it was deleted), and
        its directory if that leaves it empty; any other DID's document is left alone."""
        host = did_web_host(did)
        if host is None or self._is_service_host(host):
            return
        if self._local_web_doc(did) is not None:
            directory = self.well_known_dir(host)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / "did.json")
            with contextlib.suppress(OSError):
                directory.rmdir()  # fails harmlessly while an atproto-did lives there

    def service_did_document(self) -> dict[str, Any]:
        """The PDS's own DID document (`did:web:<hostname>`): just the #atproto_pds service,
        as the reference PDS publishes it (it signs nothing with this DID)."""
        return make_service_did_document(self.ctx.settings.service_did,
                                         self.ctx.settings.public_url)

    def write_service_did_doc(self) -> Path:
        """Write the service DID document to `well-known/<hostname>/did.json` (hostname as
        configured, port included, e.g. `well-known/localhost:2583/did.json`)."""
        return self._write_well_known(self.ctx.settings.hostname, "did.json",
                                      _json_bytes(self.service_did_document()))

    def write_handle_file(self, handle: str, did: str) -> Path:
        """Publish `well-known/<handle>/atproto-did` (the DID, as text)."""
        handle = handle.lower()
        if not is_valid_handle(handle):
            raise IdentityError(f"invalid handle {handle!r}")
        if not is_valid_did(did):
            raise IdentityError(f"invalid DID {did!r}")
        self._refuse_service_host(handle)
        return self._write_well_known(handle, "atproto-did", did.encode())

    def remove_handle_file(self, handle: str, did: str | None = None) -> None:
        """Withdraw `well-known/<handle>/atproto-did` (only if it names `did`, when given),
        and the handle's directory if that leaves it empty."""
        handle = handle.lower()
        if not is_valid_handle(handle) or self._is_service_host(handle):
            return
        directory = self.well_known_dir(handle)
        path = directory / "atproto-did"
        if did is not None:
            current = read_file(path)
            if current is None or current.decode(errors="replace").strip() != did:
                return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            directory.rmdir()  # fails harmlessly while a did.json still lives there
        except OSError:
            pass

    def _local_web_doc(self, did: str) -> dict[str, Any] | None:
        host = did_web_host(did)
        if host is None:
            return None
        try:
            data = read_file(self.ctx.data.well_known(host) / "did.json")
        except ValueError:  # too long to be a directory here: not one of our DIDs
            return None
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        # DIDs are case-sensitive: a differently spelled did:web is not this document.
        return doc if isinstance(doc, dict) and doc.get("id") == did else None
