"""What keeps a worker's memory small, where it is behaviour (bench/README.md, Memory)."""

from __future__ import annotations

from pds.services.auth import hash_password, verify_password

# Made with the parameters used before (argon2id, 19 MiB, 2 passes), from
# "correct horse battery staple".
OLD_HASH = ("$argon2id$v=19$m=19456,t=2,p=1$AOGH2oRLP6HjIUq7pkW+PA$"
            "FnQWXnY0K2EGudZIQDe8SCr64Mrg2k8XI8z+zriDebA")


def test_password_hashes_take_7_mib():
    """OWASP's argon2id setting of least memory: 7 MiB, 5 passes, one lane."""
    hashed = hash_password("correct horse battery staple")
    assert hashed.startswith("$argon2id$v=19$m=7168,t=5,p=1$")
    assert verify_password("correct horse battery staple", hashed)
    assert not verify_password("correct horse battery stapler", hashed)


def test_hashes_made_with_the_old_parameters_still_verify():
    """Stored hashes keep their own parameters: accounts made before the change log in."""
    assert verify_password("correct horse battery staple", OLD_HASH)
    assert not verify_password("correct horse battery stapler", OLD_HASH)


def test_gunicorns_chunk_size_table_is_only_a_shortcut():
    """Each worker empties gunicorn's table of chunk-size lines (`server.py`,
    `_trim_gunicorn_tables`): right only while gunicorn formats a size the table lacks."""
    import inspect

    from gunicorn.asgi import protocol

    src = inspect.getsource(protocol)
    assert '_CHUNK_PREFIXES.get(size) or f"{size:x}\\r\\n".encode("latin-1")' in src
    assert src.count("_CHUNK_PREFIXES") == 2  # made, and read only there
