"""Firehose frames (com.atproto.sync.subscribeRepos): a DAG-CBOR header then a payload.

A message is `{op: 1, t: "#commit"}` + payload (no `$type`); an error is `{op: -1}` +
`{error, message}`. These functions build the exact bytes a subscriber receives.
"""

from __future__ import annotations

import time
from typing import Any

import cbrrr
from cbrrr import CID

from . import car
from .codec import encode_trusted

MAX_BLOCKS_BYTES = 2_000_000
MAX_OPS = 200


def now_iso() -> str:
    """The current time as an atproto datetime (UTC, milliseconds)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def frame(t: str, payload: dict) -> bytes:
    """A message frame of type `t` (e.g. "#commit")."""
    return encode_trusted({"op": 1, "t": t}) + encode_trusted(payload)


def error_frame(error: str, message: str | None = None) -> bytes:
    body: dict[str, Any] = {"error": error}
    if message is not None:
        body["message"] = message
    return encode_trusted({"op": -1}) + encode_trusted(body)


def commit_payload(seq: int, result: Any, when: str | None = None) -> dict:
    """The `#commit` payload of a CommitResult (sync v1.1: prevData, ops with prev)."""
    ops = []
    for op in result.ops:
        o: dict[str, Any] = {"action": op.action, "path": op.path, "cid": op.cid}
        if op.prev is not None:
            o["prev"] = op.prev
        ops.append(o)
    payload = {
        "seq": seq, "rebase": False, "tooBig": False, "repo": result.did,
        "commit": result.cid, "rev": result.rev, "since": result.since,
        "blocks": result.car_slice(), "ops": ops, "blobs": [],
        "time": when or now_iso(),
    }
    if result.prev_data is not None:
        payload["prevData"] = result.prev_data
    return payload


def sync_payload(seq: int, did: str, commit_cid: CID, commit_block: bytes, rev: str,
                 when: str | None = None) -> dict:
    """`#sync`: the signed commit alone, asserting the repo's current state."""
    return {"seq": seq, "did": did, "rev": rev,
            "blocks": car.car_bytes([commit_cid], [(commit_cid, commit_block)]),
            "time": when or now_iso()}


def identity_payload(seq: int, did: str, handle: str | None, when: str | None = None) -> dict:
    p: dict[str, Any] = {"seq": seq, "did": did, "time": when or now_iso()}
    if handle is not None:
        p["handle"] = handle
    return p


def account_payload(seq: int, did: str, status: str | None, when: str | None = None) -> dict:
    """`#account`: active with no status, or inactive with the reason."""
    p: dict[str, Any] = {"seq": seq, "did": did, "time": when or now_iso(),
                         "active": status is None}
    if status is not None:
        p["status"] = status
    return p


def info_frame(name: str, message: str | None = None) -> bytes:
    """The unsequenced `#info` message (e.g. OutdatedCursor)."""
    body: dict[str, Any] = {"name": name}
    if message is not None:
        body["message"] = message
    return frame("#info", body)


def split_frame(data: bytes) -> tuple[dict, dict]:
    """Header and payload of a stored frame."""
    items = list(cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(data))
    if len(items) != 2:
        raise ValueError("a frame is exactly two DAG-CBOR items")
    header, payload = items
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ValueError("a frame's header and payload are DAG-CBOR maps")
    return header, payload
