"""Every XRPC call's input against its method's lexicon, in one place, before the
handler runs: query parameters (read as their lexicon types) and a JSON body. A
mismatch is the reference's 400 `InvalidRequest`, its message naming the parameter
(`Params/limit can not be greater than 100`, `Input must have the property "repo"`).

With `PDS_VALIDATE_OUTPUT` (the tests set it) the JSON answers are checked against the
lexicons too, so the server's response shapes can't drift from them unnoticed."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInput
from ..lexicon import LexiconError, official
from ..lexicon.params import check_params
from ..lexicon.validate import check_input, check_output

log = logging.getLogger("pds.xrpc")


def check_query(nsid: str, params: Mapping[str, Any]) -> None:
    """A call's query parameters (before its credentials, as the reference does)."""
    try:
        check_params(official(), nsid, params)
    except LexiconError as e:
        raise InvalidInput(str(e)) from None


def check_body(nsid: str, body: Any) -> None:
    """A procedure's JSON body (after its credentials)."""
    try:
        check_input(official(), nsid, body)
    except LexiconError as e:
        raise InvalidInput(str(e)) from None


class OutputInvalid(RuntimeError):
    """An answer that does not fit its lexicon: a bug of ours (answered 500)."""


def check_answer(nsid: str, answer: Any) -> None:
    """A JSON answer against the method's lexicon (only when the settings ask)."""
    try:
        check_output(official(), nsid, answer)
    except LexiconError as e:
        log.error("answer of %s does not fit its lexicon: %s", nsid, e)
        raise OutputInvalid(f"{nsid}: {e}") from None


def preload(nsids: list[str], outputs: bool) -> None:
    """Read and compile the lexicons of these methods now (blocking: a worker's start-up
    runs it in a thread), so no request waits on a lexicon file."""
    lex = official()
    checks = [check_params, check_input] + ([check_output] if outputs else [])
    for nsid in nsids:
        for check in checks:
            try:
                check(lex, nsid, {})
            except LexiconError:
                pass  # an empty call misses what is required: compiled all the same
