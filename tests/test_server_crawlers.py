"""PDS_CRAWLERS with `pds serve --workers 2`: relays are asked to crawl at start-up and on
the first write, and no write waits on them.

A thread of the master once did the start-up announcement; every worker forked while it
ran inherited its locks (an import lock of httpx), and the first write then hung its
worker for good.
"""

from __future__ import annotations

import httpx
from harness import running_server, wait_for
from server_util import Api, ok
from test_ops_admin import Relay, relay  # noqa: F401 - `relay`: the fixture below


def test_relays_announced_and_writes_answered(
        tmp_path, relay: tuple[str, type[Relay]]) -> None:  # noqa: F811 - the fixture
    url, handler = relay
    with running_server(tmp_path, env={"PDS_CRAWLERS": url}) as server:
        crawl = ("/xrpc/com.atproto.sync.requestCrawl", {"hostname": "localhost"})
        wait_for(lambda: crawl in handler.calls, 30, "the start-up requestCrawl")
        api = Api(server)
        # Both workers answer writes (a new connection each time); the first write
        # announces again, in the background.
        accounts = [api.create_account(f"crawl{i}") for i in range(2)]
        with httpx.Client(base_url=server.url, timeout=30) as fresh:
            for _round in range(4):
                for acct in accounts:
                    r = fresh.post("/xrpc/com.atproto.repo.createRecord",
                                   headers={"Authorization": f"Bearer {acct.access}",
                                            "Connection": "close"},
                                   json={"repo": acct.did, "collection": "com.example.note",
                                         "record": {"$type": "com.example.note",
                                                    "text": "hi"}})
                    ok(r)
        wait_for(lambda: handler.calls.count(crawl) >= 2, 30,
                 "a requestCrawl after the first write")
        assert all(c == crawl for c in handler.calls), handler.calls
        api.close()
