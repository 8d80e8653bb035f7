"""Lexicon validation: the official lexicon documents (the JSON files the `lexrpc`
package ships) compiled, one NSID at a time and only when first needed, into checkers
of records, XRPC parameters, input and output bodies.

Pure: no I/O but reading the lexicon files, no knowledge of the data dir or of HTTP. A
failed check raises `LexiconError` with the reference implementation's message, which
names the field's path (`Record/text`, `Params/limit`, `Input/repo`) and the rule.
"""

from __future__ import annotations

from .compiler import LexiconError
from .schemas import LEXICON_SET, Lexicons, official

__all__ = ["LEXICON_SET", "LexiconError", "Lexicons", "official"]
