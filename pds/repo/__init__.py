"""Pure atproto data: codec, CIDs, TIDs, syntax, keys, MST, commits, CAR."""
