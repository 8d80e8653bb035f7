"""Signed repository commits (repo v3)."""

from __future__ import annotations

from dataclasses import dataclass

from cbrrr import CID

from .codec import InvalidData, cid_for, decode, encode_trusted
from .keys import PublicKey
from .signing_keys import PrivateKey
from .syntax import is_valid_did, is_valid_tid


@dataclass(frozen=True)
class Commit:
    """A decoded, signed commit object."""

    did: str
    rev: str | None  # only v2 commits may lack it
    data: CID
    sig: bytes
    prev: CID | None = None
    version: int = 3

    def unsigned_value(self) -> dict:
        """The map that is signed: every field but `sig` (with `prev` present, as null)."""
        value = {"did": self.did, "data": self.data, "prev": self.prev, "version": self.version}
        if self.rev is not None:
            value["rev"] = self.rev
        return value

    def to_value(self) -> dict:
        return {**self.unsigned_value(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return encode_trusted(self.to_value())

    def verify(self, key: PublicKey) -> bool:
        """True when `sig` is a valid low-S signature of the unsigned commit by `key`."""
        return key.verify(encode_trusted(self.unsigned_value()), self.sig)


def sign_commit(did: str, rev: str, data: CID, key: PrivateKey) -> tuple[Commit, bytes, CID]:
    """Build and sign a commit; returns it with its block bytes and CID."""
    unsigned = {"did": did, "rev": rev, "data": data, "prev": None, "version": 3}
    sig = key.sign(encode_trusted(unsigned))
    commit = Commit(did=did, rev=rev, data=data, sig=sig)
    block = commit.to_bytes()
    return commit, block, cid_for(block)


def parse_commit(block: bytes) -> Commit:
    """Decode and check a commit block's shape (not its signature)."""
    v = decode(block)
    if type(v) is not dict:
        raise InvalidData("commit is not a map")
    version = v.get("version")
    # We write v3 only; v2 (same fields, `prev` linked the previous commit) is still
    # found in old repositories and must be readable.
    if version not in (2, 3):
        raise InvalidData("unsupported commit version")
    fields = {"did", "rev", "data", "prev", "version", "sig"}
    if set(v) != fields and not (version == 2 and set(v) == fields - {"rev"}):
        raise InvalidData("commit fields are not those of a v2/v3 commit")
    did, rev, data, prev, sig = v["did"], v.get("rev"), v["data"], v["prev"], v["sig"]
    if not isinstance(did, str) or not is_valid_did(did):
        raise InvalidData("commit did is invalid")
    if rev is not None and (not isinstance(rev, str) or not is_valid_tid(rev)):
        raise InvalidData("commit rev is not a TID")
    if not isinstance(data, CID):
        raise InvalidData("commit data must be a link")
    if prev is not None and not isinstance(prev, CID):
        raise InvalidData("commit prev must be a link or null")
    if type(sig) is not bytes or not sig:
        raise InvalidData("commit sig must be non-empty bytes")
    return Commit(did=did, rev=rev, data=data, sig=sig, prev=prev, version=version)
