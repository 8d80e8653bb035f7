"""Running the PDS: the per-worker ASGI app and gunicorn embedding.

All workers are equal and share nothing but the data dir. The master recovers every
repository (replays journals) before any worker starts, so workers never see a repo
mid-recovery.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.base import Worker

from .config import Settings
from .store.layout import DataDir

if TYPE_CHECKING:
    from .xrpc.body import RequestBody

log = logging.getLogger("pds")

SOCKET_UMASK = 0o117  # a unix socket gets 0660

# Called in a worker, on its event loop, when SIGTERM starts its graceful shutdown.
_on_term: list[Callable[[], None]] = []


def build_app(settings: Settings) -> RequestBody:
    """The ASGI app of one worker: its own AppContext and every XRPC module registered.
    Imported here, in the worker, not by the gunicorn master: the master only recovers
    the data dir and watches the workers, and every module it imports stays in its
    memory (tens of MB) for nothing."""
    from .services.context import AppContext
    from .xrpc import actor, admin, email, identity, oauth, repo, server, sync  # noqa: F401
    from .xrpc.app import create_app
    from .xrpc.wellknown import add_routes

    ctx = AppContext(settings)
    _on_term.append(ctx.broadcaster.shutdown)

    def routes(app: Any) -> None:
        add_routes(app, ctx)
        oauth.add_routes(app, ctx)
    return create_app(ctx, routes)


def _pick_cpu(arbiter: Any, worker: Any) -> None:
    """gunicorn's pre_fork hook, in the master: the CPU the worker about to be forked will
    keep to (`LateAsgiWorker.init_process` pins it), the one fewest live workers have.

    A worker runs Python in one thread at a time, and hands every write and cold read to
    a thread of its own pool and back (`services/threads.py`). Where those threads may
    run on different CPUs, each hand-off wakes a thread on another CPU (an interrupt
    between CPUs, dear on a virtual machine) and the GIL then passes between them; kept to
    one CPU, a hand-off is a switch on that CPU. Measured on a 2-core VM (bench/README.md,
    "Workers kept to one CPU each"): a hop to the pool and back in 17-25 us of CPU instead
    of 67-70, and about a tenth less server CPU per createRecord."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    live = getattr(arbiter, "WORKERS", {}).values()
    taken = collections.Counter(getattr(w, "pds_cpu", None) for w in live)
    worker.pds_cpu = min(cpus, key=lambda c: (taken[c], c))


def _post_worker_init(worker: Any) -> None:
    """gunicorn hook: on SIGTERM, close firehose subscribers at once. gunicorn's ASGI
    worker waits for open connections until the graceful timeout, and subscriptions never
    end by themselves, so without this every shutdown (and reload) would take the whole
    timeout and end them with SIGKILL instead of a close frame."""
    loop, handler = getattr(worker, "loop", None), getattr(worker, "handle_exit_signal", None)
    if loop is None or handler is None:
        return

    def on_term() -> None:
        handler()
        for fn in _on_term:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the shutdown goes on regardless
                log.exception("SIGTERM handler failed")

    loop.add_signal_handler(signal.SIGTERM, on_term)


def recover(settings: Settings) -> int:
    """Replay what a crash left unfinished (the event log, repo journals); returns
    commits replayed. The store's recovery (pds/store/recovery.py) on the data dir."""
    from .store.recovery import recover as recover_data_dir
    return recover_data_dir(DataDir(settings.data_dir))


def announce_if_restored(settings: Settings) -> dict | None:
    """After recovery, before any worker: a data dir restored by hand (a backup copied
    into place, a copy of a data dir) gets what `pds restore` gives its copy: a seq floor
    above everything emitted before, and #account, #identity, #sync for each account
    (pds/store/restored.py says how a restore is told). Returns what was done, or None."""
    from .store.restored import handle_restore
    try:
        done = handle_restore(DataDir(settings.data_dir))
    except ValueError as e:
        sys.exit(str(e))
    if done is None:
        return None
    reason, out = done
    log.warning("restored: seq floor %d, #sync for %d accounts (the data dir was restored: "
                "%s)", out["floor"], out["synced"], reason)
    return out


class LateAsgiWorker(Worker):
    """gunicorn's ASGI worker (`gunicorn.workers.gasgi.ASGIWorker`), imported in each
    worker after the fork instead of in the master.

    gunicorn loads the worker class and makes each worker object in the master, before it
    forks. The ASGI worker's module brings asyncio and gunicorn's ASGI protocol (about
    5 MB), which the master, serving nothing, would hold for nothing. In the master this is
    a plain `Worker`: the heartbeat file, age and sockets are all the master uses. Forked,
    it turns into the ASGI worker (its class switched, the attributes `ASGIWorker.__init__`
    sets added) and runs it."""

    def init_process(self) -> None:
        tune_malloc()  # first: before this process starts threads or allocates much
        cpu = getattr(self, "pds_cpu", None)
        if cpu is not None:
            with contextlib.suppress(OSError):  # the CPU went offline since: stay unpinned
                os.sched_setaffinity(0, {cpu})
        from gunicorn.workers.gasgi import ASGIWorker

        from .gunicorn_parser import install as faster_header_checks
        _trim_gunicorn_tables()
        faster_header_checks()
        # The attributes ASGIWorker.__init__ adds, from a spare instance whose heartbeat
        # file is closed at once: this object keeps its own, the one the master watches.
        spare = ASGIWorker(self.age, self.ppid, self.sockets, self.app, self.timeout,
                           self.cfg, self.log)
        spare.tmp.close()
        self.__class__ = ASGIWorker
        for name, value in vars(spare).items():
            self.__dict__.setdefault(name, value)
        self.init_process()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MALLOC_ARENAS = 2  # the event loop's thread, and one shared by the worker threads
MALLOC_MMAP_THRESHOLD = 128 * 1024  # bytes: a larger block is its own mapping
MALLOC_TRIM_THRESHOLD = 128 * 1024  # bytes free at a heap's top before it shrinks


def tune_malloc() -> bool:
    """Make glibc's malloc give memory back, in a worker (bench/README.md, Memory).

    By default glibc raises its mmap threshold to the size of the largest block freed
    (up to 32 MB): after one password hash (a 7 MiB argon2 buffer) or a large request
    body, blocks of up to that size come from the heap, whose free holes stay in the
    RSS, and the trim threshold doubles with it. Fixed thresholds keep large blocks in
    their own mappings, returned when freed. glibc also makes an arena per thread that
    allocates at once (up to 8 per core), each keeping its own free memory: two serve a
    worker's event loop and its few threads. False where there is no glibc (nothing
    tuned)."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, MALLOC_ARENAS), (_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
                (_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))
    return all(mallopt(param, value) == 1 for param, value in settings)


def _trim_gunicorn_tables() -> None:
    """gunicorn's ASGI protocol builds at import the chunk-size line of every size below
    16384 (`_CHUNK_PREFIXES`: 1.7 MB in each worker) to save a format call per chunk,
    and reads it as `_CHUNK_PREFIXES.get(size) or f"{size:x}\\r\\n"...`: emptied, the
    same bytes are formatted instead (tests/test_memory.py holds gunicorn to that)."""
    from gunicorn.asgi import protocol
    table = getattr(protocol, "_CHUNK_PREFIXES", None)
    if isinstance(table, dict):
        table.clear()


class PdsApplication(BaseApplication):
    """gunicorn, configured from Settings, serving `build_app` in each worker."""

    def __init__(self, settings: Settings, extra: dict | None = None) -> None:
        self.settings = settings
        self.extra = extra or {}
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        cfg = {
            "bind": [s.bind],
            # A unix socket (PDS_BIND=unix:PATH) is made 0660: the service's user and
            # group (nginx's user joins the group) may connect, nobody else. gunicorn's
            # default umask of 0 made it world-writable, whatever the process's umask.
            # gunicorn applies this umask only while it binds the socket.
            "umask": SOCKET_UMASK,
            "workers": s.workers,
            # gunicorn's own ASGI worker (imported after the fork: LateAsgiWorker) on
            # uvloop (a declared dependency): a third less CPU per small request than on
            # asyncio (bench/README.md). uvicorn's worker
            # closes a connection with an unread body at once (a reset where the client
            # should read its 413: xrpc/body.py). gunicorn_h1c's C parser was no faster
            # beside uvloop, and with it gunicorn dropped a connection instead of
            # answering a large or deeply nested JSON body (tests/test_server_badinput.py):
            # the Python parser, explicitly, in case it is installed. "auto": without
            # uvloop the worker still starts, on asyncio.
            "worker_class": LateAsgiWorker,
            "asgi_loop": "auto",
            "http_parser": "python",
            "control_socket_disable": True,
            "timeout": 120,
            "graceful_timeout": 10,
            "keepalive": 75,
            "proc_name": "pds",
            "post_worker_init": _post_worker_init,
            "pre_fork": _pick_cpu if s.pin_workers else None,
            # Requests are logged by the app (with request ids), not by gunicorn.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level,
            **self.extra,
        }
        for k, v in cfg.items():
            if v is not None:
                self.cfg.set(k, v)

    def load(self) -> RequestBody:
        _setup_logging(self.settings)
        return build_app(self.settings)


def _setup_logging(settings: Settings) -> None:
    """Access lines to stdout, everything else (with tracebacks) to stderr."""
    access = logging.getLogger("pds.access")
    access.propagate = False
    if not access.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
    access.setLevel(logging.INFO if settings.access_log else logging.WARNING)
    root = logging.getLogger("pds")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.INFO)


# Files the server creates (accounts, blocks, blobs, events) are not for others: like the
# systemd unit's UMask=0027 and `pds init`. Not 0077: nginx, whose user joins the
# service's group, reads blobs and well-known files straight from the data dir.
SERVE_UMASK = 0o027


def serve(settings: Settings) -> None:
    """Recover, then run gunicorn in the foreground until signalled."""
    # First, before anything writes (a migration, recovery, the workers: they inherit it),
    # whatever umask the shell that started us had.
    os.umask(SERVE_UMASK)
    if not DataDir(settings.data_dir).env_file.exists():
        sys.exit(f"no PDS data dir at {settings.data_dir} (run `pds init` first)")
    if not settings.jwt_secret:
        sys.exit("PDS_JWT_SECRET is not set (pds.env is incomplete)")
    in_child(prepare, settings)
    if settings.crawlers:
        announce_in_background(settings.host_only, settings.crawlers)
    PdsApplication(settings).run()


def prepare(settings: Settings) -> None:
    """Before any worker: migrate the data dir, replay what a crash left unfinished, and
    announce a restore."""
    from .store.format import CURRENT, FormatError, ensure_current
    try:
        old = ensure_current(settings.data_dir)
    except FormatError as e:
        sys.exit(str(e))
    if old != CURRENT:
        log.warning("migrated the data dir from format %d to %d", old, CURRENT)
    replayed = recover(settings)
    if replayed:
        log.warning("recovered %d journal entries", replayed)
    announce_if_restored(settings)


def in_child(fn: Callable[[Settings], None], settings: Settings) -> None:
    """`fn(settings)` in a forked child, waited for; what it raises is raised here.

    For the gunicorn master's memory: recovery needs the whole store (CBOR, keys,
    signatures: about 10 MB of modules), which the master would otherwise keep for
    nothing while it only watches its workers, which import what they need themselves."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: report what it raised through the pipe, and leave
        os.close(read_end)
        out = b""
        try:
            fn(settings)
        except BaseException as e:  # noqa: BLE001 - every outcome goes to the parent
            try:
                out = pickle.dumps(e)
                pickle.loads(out)  # some exceptions pickle but can't be rebuilt
            except Exception:  # noqa: BLE001 - one that won't cross: its text does
                out = pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))
        with os.fdopen(write_end, "wb") as f:
            f.write(out)
        for h in logging.getLogger().handlers + logging.getLogger("pds").handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if out:
        raise pickle.loads(out)  # our own child's: trusted
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"start-up preparation died ({os.waitstatus_to_exitcode(status)})")


def announce_in_background(hostname: str, crawlers: list[str]) -> None:
    """requestCrawl to every configured relay at start-up, from a child process.

    Not from a thread of this (the gunicorn master) process: gunicorn forks its workers
    while such a thread runs, and each worker got a copy of whatever lock the thread held
    at that instant, never to be released. The thread was importing httpx, so a worker's
    first outbound request (the first write's relay announcement) waited forever for
    httpcore's import lock, and with it the worker's event loop and every request on it.
    The child is a new interpreter; gunicorn's master reaps it when it exits."""
    subprocess.Popen([sys.executable, "-m", "pds.server", hostname, *crawlers],
                     stdin=subprocess.DEVNULL)


def _announce(hostname: str, crawlers: list[str]) -> None:
    import httpx
    for crawler in crawlers:
        try:
            httpx.post(crawler.rstrip("/") + "/xrpc/com.atproto.sync.requestCrawl",
                       json={"hostname": hostname}, timeout=10)
        except httpx.HTTPError as e:
            log.warning("requestCrawl to %s failed: %s", crawler, e)


if __name__ == "__main__":  # the start-up announcement (see announce_in_background)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO)
    _announce(sys.argv[1], sys.argv[2:])
