"""gunicorn's Python HTTP parser, its byte checks done by C loops instead of Python ones.

gunicorn's ASGI worker parses requests with `gunicorn.asgi.parser.PythonProtocol` (its C
parser is kept out: pds/server.py says why). Three of its checks walk a header name or
value byte by byte in Python: `_has_invalid_header_chars` (every header value),
`_is_valid_token` (every header name, and the method) and `_is_valid_method`. With a
session token in `Authorization` that was a tenth of a worker's event-loop time per
createRecord (py-spy, bench/README.md "gunicorn's header checks"), more with an OAuth
token and its DPoP proof.

Each check asks whether every byte of its input lies in a fixed set (the method also
bounds its length), so here it is answered with `bytes.translate` (delete the allowed
bytes, see if anything is left), which runs in C. For checks of that form, agreeing on
the empty input, on each of the 256 one-byte inputs and on each length around the
method's bounds means agreeing on every input. `install` compares the installed
gunicorn's own methods with these on those inputs, and on a hundred mixed ones,
before it swaps them in, and leaves gunicorn as it is when anything differs (another
gunicorn version may check differently).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pds")

# RFC 9110 token characters: visible ASCII except the delimiters.
_DELIMITERS = b'"(),/:;<=>?@[\\]{}'
_TOKEN = bytes(c for c in range(0x21, 0x7F) if c not in _DELIMITERS)
# Methods, as gunicorn reads them without permit_unconventional_http_method: a token
# with no lowercase letter and no "#".
_METHOD = bytes(c for c in _TOKEN if not (0x61 <= c <= 0x7A or c == 0x23))
# RFC 9110 section 5.5 field values: VCHAR, SP, HTAB and obs-text.
_FIELD_VALUE = bytes(c for c in range(256) if not (c <= 0x08 or 0x0A <= c <= 0x1F or c == 0x7F))


def _is_valid_token(self: Any, data: bytes) -> bool:
    return bool(data) and not data.translate(None, _TOKEN)


def _is_valid_method(self: Any, method: bytes) -> bool:
    return 3 <= len(method) <= 20 and not method.translate(None, _METHOD)


def _has_invalid_header_chars(self: Any, value: bytes) -> bool:
    return bool(value.translate(None, _FIELD_VALUE))


_CHECKS: dict[str, Callable[[Any, bytes], bool]] = {
    "_is_valid_token": _is_valid_token,
    "_is_valid_method": _is_valid_method,
    "_has_invalid_header_chars": _has_invalid_header_chars,
}


def _samples() -> list[bytes]:
    """The inputs on which two byte-set checks agreeing means they agree everywhere (for
    the method's length bounds, a valid method of each length around them too), and
    mixed ones of many lengths in case gunicorn's check is not of that form."""
    out = [b"", *(bytes([c]) for c in range(256))]
    out += [b"A" * n for n in range(1, 23)] + [b"GET", b"POST", b"get", b"G#T"]
    rng = random.Random(16)
    pools = (_METHOD, _TOKEN, _FIELD_VALUE, bytes(range(256)))
    for _ in range(100):
        pool = pools[rng.randrange(len(pools))]
        out.append(bytes(rng.choice(pool) for _ in range(rng.randrange(40))))
    return out


def install(protocol_class: Any | None = None) -> bool:
    """Swap the three checks into gunicorn's `PythonProtocol` (or `protocol_class`) if
    they answer as its own do on every sample; True when swapped."""
    if protocol_class is None:
        from gunicorn.asgi.parser import PythonProtocol
        protocol_class = PythonProtocol
    originals = {name: getattr(protocol_class, name, None) for name in _CHECKS}
    if any(fn is None or fn in _CHECKS.values() for fn in originals.values()):
        return False  # not there in this gunicorn, or swapped already
    probe = object.__new__(protocol_class)
    samples = _samples()
    for name, ours in _CHECKS.items():
        theirs: Any = originals[name]
        for sample in samples:
            if bool(theirs(probe, sample)) != ours(probe, sample):
                log.warning("gunicorn's %s differs from ours on %r: left as it is",
                            name, sample)
                return False
    for name, ours in _CHECKS.items():
        setattr(protocol_class, name, ours)
    return True
