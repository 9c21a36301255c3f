"""The package's layers, read from every module's path and held against its own imports (``ast``).

A module's layer is the first folder of its path below ``zodbsession/``
(``core/``, ``web/``, ``ops/``, ``serve/``, ...); the adapters' folders
(``flask/``, ``pyramid/``, ``django/``, ``quixote/``) are one layer, and the
package's own top-level modules are the public surface. ``ALLOWED`` below is
the only table: which layers each layer may import (``docs/layers.md``
explains it). Every import counts, at module level, inside functions and
under ``TYPE_CHECKING`` alike, since a lazy import is still a dependency. A
module in a folder this table does not know fails the test until its folder
is given a layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import zodbsession

PACKAGE = Path(zodbsession.__file__).parent

#: {layer -> the other layers it may import}, bottom first.
ALLOWED: dict[str, frozenset[str]] = {
    # The sessions and the request-transaction core: no HTTP, no server, no operator.
    "core": frozenset(),
    # The front doors: HTTP (WSGI, ASGI, the cookie) on the core.
    "web": frozenset({"core"}),
    # The settings (``zodbsession.config``).
    "config": frozenset({"core", "web"}),
    # The test kit: fixtures, in-process clients, request and script scopes.
    "testing": frozenset({"core", "web"}),
    # Applications shipped to run behind a front door.
    "demo": frozenset({"core", "web"}),
    # Work on a database beside the requests: expiry, maintenance, checks, metrics.
    "ops": frozenset({"core"}),
    # The admin listener's application.
    "admin": frozenset({"core", "web", "ops"}),
    # The framework adapters: a framework's session on the core and a front door, configured
    # by the settings, with the expiry sweep of the operations; their test clients build on
    # the test kit. An adapter may import ``zodbsession``'s public names (the package re-exports
    # the core and the front doors only), so it needs no internal path.
    "adapters": frozenset({"core", "web", "config", "testing", "ops", "package"}),
    # Serving it: finding the app, waitress and uvicorn, workers, the ZEO server, the control
    # socket, the CLI.
    "serve": frozenset({"core", "web", "config", "demo", "ops", "admin"}),
    # ``import zodbsession`` and ``zodbsession.asgi``: the public surface, on the core and the
    # front doors only.
    "package": frozenset({"core", "web"}),
}

#: The folders that are the framework adapters' layer.
ADAPTERS = frozenset({"flask", "pyramid", "django", "quixote"})

#: The package's public modules: ``zodbsession`` itself and the ASGI door's address.
PUBLIC = frozenset({"", "asgi"})

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
    """The layer of module *name* (dotted below ``zodbsession``), from its path alone."""
    top = name.partition(".")[0]
    if top in PUBLIC:
        return "package"
    if top in ADAPTERS:
        return "adapters"
    return top if top in ALLOWED else None


MODULES = module_names()
GRAPH = {name: imports_of(name, set(MODULES)) for name in MODULES}
RUN_TIME_GRAPH = {name: imports_of(name, set(MODULES), at_run_time=True) for name in MODULES}


def test_every_module_has_a_layer():
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert not unplaced, f"give their folders a layer in ALLOWED (this file, docs/layers.md): {unplaced}"


@pytest.mark.parametrize("name", MODULES, ids=[m or "zodbsession" for m in MODULES])
def test_module_imports_only_its_own_layer_and_the_layers_below(name):
    layer = layer_of(name)
    if layer is None:
        pytest.skip("unplaced: see test_every_module_has_a_layer")
    allowed = ALLOWED[layer] | {layer}
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


#: The one module below the server that may import ZEO: it opens ``zeo://`` URIs (lazily).
ZEO_OPENER = "core.db"


@pytest.mark.parametrize("name", [m for m in MODULES if layer_of(m) in ("core", "web", "package")])
def test_the_core_and_the_front_doors_import_zeo_only_to_open_a_zeo_uri(name):
    tree = ast.parse(source_of(name).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    uses_zeo = {m for m in imported if m.partition(".")[0] == "ZEO"}
    assert not uses_zeo or name == ZEO_OPENER, uses_zeo


def loaded_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running *statement*."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_importing_the_package_and_its_front_doors_loads_no_server_and_no_zeo():
    loaded = loaded_after("import zodbsession, zodbsession.web.wsgi.publisher, zodbsession.web.asgi")
    unwanted = {m for m in loaded if m.partition(".")[0] in {
        "ZEO", "waitress", "uvicorn", "click", "prometheus_client"}}
    unwanted |= loaded & {"zodbsession.serve.server", "zodbsession.serve.cli", "zodbsession.admin"}
    assert not unwanted


def test_importing_the_settings_loads_no_zeo_server_nor_the_server():
    loaded = loaded_after("import zodbsession.config")
    assert not loaded & {"ZEO.StorageServer", "zodbsession.serve.zeo", "zodbsession.serve.server", "waitress"}
