"""The package's layers, read from every module's own imports (``ast``), and held.

The table below is the map (``docs/layers.md`` explains it): a module may
import its own layer and the layers it lists, nothing above. Every import
counts, at module level, inside functions and under ``TYPE_CHECKING``
alike, since a lazy import is still a dependency. A module that the table
does not name fails the test until it is placed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import zodbsession

PACKAGE = Path(zodbsession.__file__).parent

#: {layer -> (its modules, the other layers it may import)}, bottom first. A package
#: (``asgi``, ``admin``, ``demo``, ``django``) stands for every module inside it.
LAYERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # The sessions and the request-transaction core: no HTTP, no server, no operator.
    "core": (frozenset({
        "errors", "session", "store", "manager", "limits", "observe", "retry", "outcomes", "commit",
        "transact", "attempt", "locks", "registry", "request_session", "work", "periodic", "db", "merge",
        "unsaved",
    }), frozenset()),
    # The front doors: HTTP (WSGI, ASGI, the cookie) on the core.
    "front door": (frozenset({"cookies", "publisher", "response", "replay", "asgi"}),
                   frozenset({"core"})),
    # The settings, and finding an application by its "module:name".
    "settings": (frozenset({"config", "apps"}), frozenset({"core", "front door"})),
    # The test kit: fixtures, in-process clients, request and script scopes.
    "test kit": (frozenset({"testing"}), frozenset({"core", "front door"})),
    # The framework adapters: a framework's session on the core and a front door, configured
    # by the settings, with the expiry sweep of the operations; their test clients build on
    # the test kit. An adapter may import the public names of ``zodbsession`` itself (the
    # package re-exports the core and the front doors only), so it needs no internal path.
    "adapters": (frozenset({"flask", "pyramid", "django", "quixote"}),
                 frozenset({"core", "front door", "settings", "test kit", "operations", "package"})),
    # Applications shipped to run behind a front door.
    "application": (frozenset({"demo"}), frozenset({"core", "front door"})),
    # Work on a database beside the requests: expiry, maintenance, checks, metrics.
    "operations": (frozenset({"maintenance", "verify", "janitor", "lease", "metrics"}), frozenset({"core"})),
    # The admin listener's application.
    "admin": (frozenset({"admin"}), frozenset({"core", "front door", "operations"})),
    # Serving it: waitress and uvicorn, workers, the ZEO server, the control socket.
    "server": (frozenset({"zeo", "workers", "waitress_serving", "uvicorn_serving", "server",
                          "control"}),
               frozenset({"core", "front door", "settings", "application", "operations", "admin"})),
    "cli": (frozenset({"cli"}), frozenset({"core", "front door", "settings", "application", "operations",
                                            "admin", "server"})),
    # ``import zodbsession``: the public surface, the core and the front doors only.
    "package": (frozenset({""}), frozenset({"core", "front door"})),
}

#: Edges that break the table but belong to another engineer's module: {(importer, imported): owner}.
KNOWN_WRONG_WAY: dict[tuple[str, str], str] = {}


def module_names() -> list[str]:
    """Every module of the package, dotted below ``zodbsession`` ("" for the package itself)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def source_of(name: str) -> Path:
    base = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imports_of(name: str, known: set[str], *, at_run_time: bool = False) -> set[str]:
    """The package's modules *name* imports, anywhere in its source (*at_run_time*: not
    those only under ``if TYPE_CHECKING:``, which never run)."""
    tree = ast.parse(source_of(name).read_text(encoding="utf-8"))
    if at_run_time:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
    package = name if source_of(name).name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def inner(target: str) -> str | None:
        """The package's module *target* is, or lies in; None outside the package."""
        if target != "zodbsession" and not target.startswith("zodbsession."):
            return None
        module = target.removeprefix("zodbsession").removeprefix(".")
        while module and module not in known:
            module = module.rpartition(".")[0]
        return module

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [inner(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(["zodbsession", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from zodbsession import maintenance`` imports a module, ``from x import y`` a name of x.
            targets = [inner(f"{module}.{alias.name}") for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t is not None and t != name)
    return found


def layer_of(name: str) -> str | None:
    top = name.partition(".")[0]
    for layer, (modules, _allowed) in LAYERS.items():
        if name in modules or top in modules:
            return layer
    return None


MODULES = module_names()
GRAPH = {name: imports_of(name, set(MODULES)) for name in MODULES}
RUN_TIME_GRAPH = {name: imports_of(name, set(MODULES), at_run_time=True) for name in MODULES}


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS (tests/test_layers.py, docs/layers.md): {unplaced}"


@pytest.mark.parametrize("name", MODULES, ids=[m or "zodbsession" for m in MODULES])
def test_module_imports_only_its_own_layer_and_the_layers_below(name):
    layer = layer_of(name)
    if layer is None:
        pytest.skip("unplaced: see test_every_module_has_a_layer")
    allowed = LAYERS[layer][1] | {layer}
    wrong = {}
    for imported in sorted(GRAPH[name]):
        imported_layer = layer_of(imported)
        if imported_layer not in allowed and (name, imported) not in KNOWN_WRONG_WAY:
            wrong[imported or "zodbsession"] = imported_layer
    assert not wrong, f"{name or 'zodbsession'} ({layer}) imports upwards: {wrong}"


def test_known_wrong_way_edges_are_still_wrong():
    """An entry in KNOWN_WRONG_WAY that was fixed must leave the list."""
    for (importer, imported), owner in KNOWN_WRONG_WAY.items():
        assert imported in GRAPH.get(importer, set()), f"{importer} -> {imported} ({owner}) is fixed"


def test_no_two_modules_import_each_other_in_a_cycle():
    """A package's own ``__init__`` importing its submodules is not a cycle; anything else is.

    Imports only for the type checker (under ``TYPE_CHECKING``) never run, so they make no cycle.
    """

    def edges(name: str) -> set[str]:
        return {m for m in RUN_TIME_GRAPH[name] if not (m == "" or (m and name.startswith(m + ".")))}

    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(edges(name)):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return None

    for name in MODULES:
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(m or "zodbsession" for m in cycle)


def loaded_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running *statement*."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_package_and_its_front_doors_loads_no_server_and_no_zeo():
    loaded = loaded_after("import zodbsession, zodbsession.publisher, zodbsession.asgi")
    unwanted = {m for m in loaded if m.partition(".")[0] in {
        "ZEO", "waitress", "uvicorn", "click", "prometheus_client"}}
    unwanted |= {m for m in loaded if m in {"zodbsession.server", "zodbsession.cli", "zodbsession.admin"}}
    assert not unwanted


def test_importing_the_settings_loads_no_zeo_server_nor_the_server():
    loaded = loaded_after("import zodbsession.config")
    assert not loaded & {"ZEO.StorageServer", "zodbsession.zeo", "zodbsession.server", "waitress"}
