"""`pds serve` started from a shell with a permissive umask (022, the usual default) still
creates nothing others can read: it sets a 027 umask itself, as the systemd unit's
`UMask=0027` and `pds init` do (the group keeps read access: nginx reads blobs and the
well-known files through it).

A real `pds serve --workers 2` writes accounts, sessions, blocks, a blob, events and the
well-known files; then every file and directory of the data dir, whichever process made
it (the master's recovery, either worker), has no permission bits for others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from harness import free_port, init_data_dir, start_server
from server_util import Api, blob_ref, ok


def test_files_a_server_creates_are_not_for_others(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    init_data_dir(data, port, did_method="web")
    old = os.umask(0o022)  # the shell the server is started from
    try:
        server = start_server(data, port, workers=2, wait=60)
    finally:
        os.umask(old)
    try:
        api = Api(server)
        accts = [api.create_account(n) for n in ("umask1", "umask2")]
        for a in accts:
            ok(api.create_record(a, {"text": "hello"}))
        up = ok(api.post("com.atproto.repo.uploadBlob", content=os.urandom(2000),
                         token=accts[0].access, headers={"Content-Type": "image/png"}))
        ok(api.create_record(accts[0], {"image": blob_ref(up["blob"])}, "com.example.pic"))
        ok(api.post("com.atproto.server.createSession",
                    {"identifier": accts[1].handle, "password": accts[1].password}))
        api.close()
    finally:
        server.stop()
    modes: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(data):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            modes[str(p.relative_to(data))] = stat.S_IMODE(p.lstat().st_mode)
    # What the server made: accounts (records, blocks, blobs, sessions), events, handles.
    kinds = ("accounts/did:web:umask1.test/blocks", "accounts/did:web:umask1.test/blobs",
             "accounts/did:web:umask2.test/sessions", "accounts/did:web:umask1.test/HEAD",
             "handles/umask1.test", "seq/00000000", "seq/INODE")
    for kind in kinds:
        assert any(k == kind or k.startswith(kind + "/") for k in modes), (kind, sorted(modes))
    open_to_others = {k: oct(m) for k, m in modes.items() if m & 0o007}
    assert not open_to_others, open_to_others
    # ...while the group (nginx) can still read blobs and events.
    blobs = [k for k in modes if "/blobs/" in k and not k.endswith(".json")
             and stat.S_ISREG((data / k).lstat().st_mode)]
    assert blobs and all(modes[k] & 0o040 for k in blobs), {k: oct(modes[k]) for k in blobs}
