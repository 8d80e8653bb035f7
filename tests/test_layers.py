"""The shape of the code: layers import only downwards, every XRPC method's NSID is
findable by grep, and every domain error kind has an answer in the XRPC error table."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import pds
from pds.errors import PdsError

ROOT = Path(pds.__file__).parent

# (package, packages it must not import). Arrows point down: cli/server > xrpc > services
# > repo/store/lexicon, with repo pure data under the store and the lexicon checkers.
FORBIDDEN = {
    "pds.errors": ["pds"],
    "pds.repo": ["pds.store", "pds.services", "pds.xrpc", "pds.cli", "pds.server"],
    "pds.lexicon": ["pds.store", "pds.services", "pds.xrpc", "pds.cli", "pds.server"],
    "pds.store": ["pds.services", "pds.xrpc", "pds.cli", "pds.server"],
    "pds.services": ["pds.xrpc", "pds.cli", "pds.server"],
    "pds.xrpc": ["pds.store", "pds.cli", "pds.server"],
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports, anywhere in it (functions included), absolute."""
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import name` may import the submodule pkg.name.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_resolves_relative_imports() -> None:
    imports = _imports("pds.xrpc.repo", ROOT / "xrpc" / "repo.py")
    assert "pds.services.records" in imports and "pds.xrpc.app" in imports


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer: str) -> None:
    bad = []
    for module, path in _modules():
        if not _within(module, layer):
            continue
        for name in sorted(_imports(module, path)):
            for forbidden in FORBIDDEN[layer]:
                if _within(name, forbidden):
                    bad.append(f"{module} imports {name}")
    assert not bad, "\n".join(bad)


def _load_all() -> None:
    """Import every module of pds (not `__main__`s), so every handler is registered and
    every error class defined. (By file: some packages have no `__init__.py`.)"""
    for module, _path in _modules():
        if not module.endswith(".__main__"):
            importlib.import_module(module)


def _registrations(nsid: str, handler) -> bool:
    """Whether the module of `handler` registers it under `nsid` spelled as one literal
    string in the decorator."""
    module = importlib.import_module(handler.__module__)
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or \
                node.name != handler.__name__:
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and deco.args and \
                    isinstance(deco.args[0], ast.Constant) and deco.args[0].value == nsid:
                return True
    return False


def test_every_nsid_is_a_literal_where_it_is_registered() -> None:
    _load_all()
    from pds.xrpc import registry
    assert registry.METHODS and registry.SUBSCRIPTIONS
    handlers = [(nsid, m.handler) for nsid, m in registry.METHODS.items()]
    handlers += list(registry.SUBSCRIPTIONS.items())
    missing = [f"{nsid} ({h.__module__}.{h.__name__})" for nsid, h in handlers
               if not _registrations(nsid, h)]
    assert not missing, "registered without their NSID spelled out:\n" + "\n".join(missing)


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_error_table_covers_every_kind() -> None:
    _load_all()
    from pds.xrpc.errors import ERRORS
    kinds = {c for c in _subclasses(PdsError) if c.__module__.startswith("pds.")}
    assert kinds, "no error kinds found"
    missing = sorted(c.__qualname__ for c in kinds if c not in ERRORS)
    assert not missing, f"error kinds with no row in pds.xrpc.errors.ERRORS: {missing}"
    assert all(issubclass(c, PdsError) for c in ERRORS)


def test_errors_render_as_the_table_says() -> None:
    from pds.errors import AuthFailed, AuthRequired, InvalidInput, NotSupported, RateLimited
    from pds.xrpc.errors import render

    assert render(InvalidInput("bad")) == (400, "InvalidRequest", "bad", {})
    assert render(InvalidInput("gone", "RecordNotFound"))[:2] == (400, "RecordNotFound")
    status, name, _, headers = render(AuthRequired("Authentication Required"))
    assert (status, name) == (401, "AuthenticationRequired")
    assert headers == {"WWW-Authenticate": 'Bearer realm="pds"'}
    assert render(AuthFailed("no", "InvalidToken")) == (401, "InvalidToken", "no", {})
    limited = render(RateLimited("slow down", headers={"Retry-After": "5"}))
    assert limited == (429, "RateLimitExceeded", "slow down", {"Retry-After": "5"})
    assert render(NotSupported("nope"))[:2] == (501, "MethodNotImplemented")
    # A PdsError of no kind is a bug: answered as one, its message kept from the client.
    assert render(PdsError("secret detail")) == (500, "InternalServerError",
                                                  "Internal Server Error", {})


# --- thin handlers ------------------------------------------------------------------------

XRPC = ROOT / "xrpc"
# What a handler may not reach through the context: the data dir and what holds it.
# (Services are reached as `ctx.<service>`; storage only through them.)
STORAGE_ATTRS = {"accounts", "repo", "data", "blobs", "local_signing_key", "events"}
# Service functions a handler may call inline: pure checks and shaping, no I/O.
PURE_SERVICE_CALLS = {
    "check_collection", "check_rkey", "parse_record", "parse_cid_field", "new_rkey",
    "commit_result_view", "Write", "normalize_handle_input", "subject_did",
    "check_preferences", "Page", "csrf_matches", "Forward",
}


def _handler_modules() -> list[Path]:
    return sorted(p for p in XRPC.glob("*.py") if p.name != "__init__.py")


def _is_ctx(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "ctx") or \
        (isinstance(node, ast.Attribute) and node.attr == "ctx")


def test_handlers_reach_no_storage() -> None:
    """Handlers do no file I/O themselves: no `ctx.accounts`/`ctx.repo(...)`/`ctx.data`,
    no blob stores, no `open`."""
    bad = []
    for path in _handler_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in STORAGE_ATTRS \
                    and _is_ctx(node.value):
                bad.append(f"{path.name}:{node.lineno} ctx.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "open":
                bad.append(f"{path.name}:{node.lineno} open()")
            elif isinstance(node, ast.ImportFrom) and node.level and \
                    (node.module or "").startswith("store"):
                bad.append(f"{path.name}:{node.lineno} imports the store")
    assert not bad, "storage work in handlers:\n" + "\n".join(bad)


def _service_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(aliases of service modules, service functions imported by name) of a module."""
    modules, functions = set(), set()
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        if node.module == "services":
            modules.update(a.asname or a.name for a in node.names)
        elif (node.module or "").startswith("services."):
            functions.update(a.asname or a.name for a in node.names)
    return modules, functions


def _service_call(node: ast.Call, modules: set[str], functions: set[str]) -> str | None:
    """The name of the service function `node` calls, if it calls one."""
    func = node.func
    if isinstance(func, ast.Name) and func.id in functions:
        return func.id
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in modules:
            return func.attr
        # ctx.<service>.<method>(...)
        if isinstance(func.value, ast.Attribute) and _is_ctx(func.value.value):
            return f"ctx.{func.value.attr}.{func.attr}"
    return None


def test_handlers_await_their_service_calls() -> None:
    """Blocking work never runs on the event loop: a handler awaits every service call
    (a coroutine, or `blocking(blocking_service_fn, ...)`), but for the few
    pure ones listed."""
    bad = []
    for path in _handler_modules():
        tree = ast.parse(path.read_text(), str(path))
        modules, functions = _service_names(tree)
        awaited = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Await)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _service_call(node, modules, functions)
            if name is None or id(node) in awaited or name in PURE_SERVICE_CALLS:
                continue
            if name.startswith("ctx.settings."):
                continue
            bad.append(f"{path.name}:{node.lineno} {name}(...)")
    assert not bad, "service calls a handler neither awaits nor lists as pure:\n" + \
        "\n".join(bad)


def test_pure_service_calls_are_plain_functions() -> None:
    """What handlers call inline is not a coroutine (it would never run)."""
    import inspect
    _load_all()
    found = set()
    for module, _path in _modules():
        if not module.startswith("pds.services"):
            continue
        mod = importlib.import_module(module)
        for name in PURE_SERVICE_CALLS & set(vars(mod)):
            assert not inspect.iscoroutinefunction(getattr(mod, name)), f"{module}.{name}"
            found.add(name)
    assert found == PURE_SERVICE_CALLS


MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500


def test_functions_and_modules_stay_small() -> None:
    """Everywhere in pds/: functions of at most 60 lines, modules of at most 500."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            bad.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{name}:{node.lineno} {node.name}: {n}")
    assert not bad, "too long:\n" + "\n".join(bad)
