"""gunicorn's header checks, done by `bytes.translate` (pds/gunicorn_parser.py): the same
answers as gunicorn's own on every input tried, swapped in only when that holds, and
the server still refusing what they refuse."""

from __future__ import annotations

import itertools
import random
import socket

import pytest
from gunicorn.asgi.parser import PythonProtocol
from server_util import api_fixture

from pds import gunicorn_parser

NAMES = ("_is_valid_token", "_is_valid_method", "_has_invalid_header_chars")


def _fresh() -> type:
    """A subclass of gunicorn's parser to swap checks into, leaving gunicorn's alone."""
    return type("Fresh", (PythonProtocol,), {})


def test_installed_checks_answer_as_gunicorns_on_every_two_byte_input_and_more():
    cls = _fresh()
    assert gunicorn_parser.install(cls)
    ours = object.__new__(cls)
    theirs = object.__new__(PythonProtocol)
    inputs = [b"", *(bytes(p) for n in (1, 2) for p in itertools.product(range(256), repeat=n))]
    rng = random.Random(7)
    token = bytes(c for c in range(0x21, 0x7F) if c not in b'"(),/:;<=>?@[\\]{}')
    inputs += [bytes(rng.choice(token) for _ in range(rng.randrange(1, 30))) for _ in range(2000)]
    inputs += [b"POST", b"GET", b"DELETE", b"M-SEARCH", b"X" * 20, b"X" * 21, b"Authorization",
               b"Bearer " + b"eyJ0" * 100, b"caf\xc3\xa9 \t ok", b"a\x00b", b"a\nb", b"a\x7f"]
    for name in NAMES:
        mine, gunicorns = getattr(ours, name), getattr(theirs, name)
        assert getattr(cls, name) is not getattr(PythonProtocol, name)
        for data in inputs:
            assert mine(data) == bool(gunicorns(data)), (name, data)


def test_install_leaves_a_parser_whose_checks_differ_as_it_is():
    def lax_token(self, data: bytes) -> bool:  # also takes a space, as ours does not
        return bool(data) and all(0x20 <= c <= 0x7E for c in data)

    cls = type("Lax", (PythonProtocol,), {"_is_valid_token": lax_token})
    assert not gunicorn_parser.install(cls)
    assert cls.__dict__["_is_valid_token"] is lax_token
    assert "_has_invalid_header_chars" not in cls.__dict__  # nothing swapped, not even these


def test_install_twice_swaps_once():
    cls = _fresh()
    assert gunicorn_parser.install(cls)
    assert not gunicorn_parser.install(cls)


api = api_fixture()


def _status(api, head: bytes) -> int:
    port = int(api.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        line = sock.makefile("rb").readline()
    return int(line.split()[1])


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Ok: caf\xc3\xa9\t1\r\n\r\n", 200),
    (b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400),
    (b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x7fb\r\n\r\n", 400),
    (b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX(Bad): 1\r\n\r\n", 400),
    (b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX\x80Bad: 1\r\n\r\n", 400),
    (b"get /xrpc/_health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"G@T /xrpc/_health HTTP/1.1\r\nHost: x\r\n\r\n", 400),
])
def test_the_server_still_refuses_what_gunicorns_checks_refuse(api, head, status):
    assert _status(api, head) == status
