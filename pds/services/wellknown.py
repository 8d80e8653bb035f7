"""The static well-known documents: `well-known/<host>/atproto-did` (a hosted handle's DID)
and `well-known/<host>/did.json` (a did:web document), which the identity service writes
and nginx serves; read back here for the app to serve when no nginx fronts it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from ..store.files import read_file

# A Host header as a directory name: no '/', and no '..' (checked too), so a lookup can
# never leave well-known/.
_HOST = re.compile(r"^[a-z0-9.-]+(:[0-9]{1,5})?$")


async def read_document(ctx: Any, host: str, name: str) -> bytes | None:
    """The document `name` published for `host` (as a Host header names it, lowercase),
    or None when there is none or `host` can't be a directory of ours."""
    if not _HOST.match(host) or ".." in host:
        return None
    try:
        directory = ctx.data.well_known(host)
    except ValueError:  # too long to be a directory of ours
        return None
    return await asyncio.to_thread(read_file, directory / name)
