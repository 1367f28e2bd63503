"""Layering: production code never imports the development stack; the domain stays pure.

``popsync.dev`` (embedded broker and database, simulator, demo) is for development only:
a worker, an operator tool or the library must run without it, so nothing outside it may
import it, at module level or inside a function. The command line is the one exception, and
only in the handlers of development commands. The domain (contract rules, merge logic) knows
nothing of Kafka, SQL or the runtime that feeds it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from popsync import cli

ROOT = Path(__file__).resolve().parents[2]
DEV = "popsync.dev"
DEV_COMMANDS = frozenset(
    {"demo", "simulate", "bench", "stack"}
)  # handlers that may import popsync.dev
# The domain's outer layers and the clients they wrap.
NOT_IN_DOMAIN = (
    "popsync.adapters",
    "popsync.runtime",
    "popsync.ops",
    "popsync.services",
    "popsync.dev",
    "confluent_kafka",
    "faust",
    "aiokafka",
    "psycopg",
)
_IMPORTERS = frozenset({"import_module", "__import__"})


def module_name(path: Path) -> str:
    """The dotted name a file is imported under (``services/`` is ``popsync.services``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "services":
        parts = ["popsync", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(*folders: str, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(
        path
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if not any(path.relative_to(ROOT).as_posix().startswith(s) for s in skip)
    )


def imports(node: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``node`` imports, anywhere inside it.

    Relative imports are resolved; ``from a import b`` gives both ``a`` and ``a.b`` (``b``
    may be a module); a constant name passed to ``importlib.import_module`` counts too.
    """
    package = module if is_package else module.rpartition(".")[0]
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield child.lineno, alias.name
        elif isinstance(child, ast.ImportFrom):
            target = child.module or ""
            if child.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - child.level + 1])
                target = f"{base}.{target}" if target else base
            yield child.lineno, target
            for alias in child.names:
                yield child.lineno, f"{target}.{alias.name}"
        elif isinstance(child, ast.Call) and child.args:
            called = child.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            first = child.args[0]
            if (
                name in _IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield child.lineno, first.value


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(path: Path, forbidden: tuple[str, ...], node: ast.AST | None = None) -> list[str]:
    tree = node or ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = {
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for line, name in imports(tree, module_name(path), path.name == "__init__.py")
        if any(within(name, prefix) for prefix in forbidden)
    }
    return sorted(found)


PRODUCTION = sources("popsync", "services", skip=("popsync/dev/", "popsync/cli.py"))


def test_the_scan_sees_the_code_base() -> None:
    names = {module_name(path) for path in PRODUCTION}
    assert {"popsync.identity.folding", "popsync.services.validator.app"} <= names
    assert not any(within(name, DEV) for name in names)


@pytest.mark.parametrize("path", PRODUCTION, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_production_code_never_imports_dev(path: Path) -> None:
    assert violations(path, (DEV,)) == []


def test_relative_and_dynamic_imports_are_seen() -> None:
    code = """
from .. import dev
from ..dev.simulate import names
import importlib
def later():
    importlib.import_module("popsync.dev.demo")
"""
    found = {name for _, name in imports(ast.parse(code), "popsync.ops.review", False)}
    assert {"popsync.dev", "popsync.dev.simulate", "popsync.dev.demo"} <= found


# ---------------------------------------------------------------------------- command line


Handler = Callable[[argparse.Namespace], int]


def handlers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Handler]]:
    """``(command path, handler)`` of every runnable subcommand of the parser."""
    func = parser.get_default("func")
    if func is not None:
        yield path, func
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from handlers(sub, f"{path} {name}".strip())


HANDLERS = dict(handlers(cli.build_parser()))
DEV_HANDLERS = {
    func.__name__ for command, func in HANDLERS.items() if command.split()[0] in DEV_COMMANDS
}


def test_every_handler_is_a_function_of_the_cli_module() -> None:
    assert "worker" in HANDLERS and len(HANDLERS) > len(DEV_COMMANDS)
    assert {command.split()[0] for command in HANDLERS} >= DEV_COMMANDS
    for command, func in HANDLERS.items():
        assert func.__module__ == cli.__name__, command
        dev_only = command.split()[0] in DEV_COMMANDS
        assert dev_only or func.__name__ not in DEV_HANDLERS, f"{command} shares a dev handler"


def test_the_cli_imports_dev_only_in_development_commands() -> None:
    """Module level, production handlers (worker, publish, topics, db, dlq, review,
    contract, and any added later) and helpers: only the dev commands' handlers are exempt."""
    path = ROOT / "popsync" / "cli.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert defined >= DEV_HANDLERS
    found = [
        found
        for node in tree.body
        if not (isinstance(node, ast.FunctionDef) and node.name in DEV_HANDLERS)
        for found in violations(path, (DEV,), node)
    ]
    assert found == []


# --------------------------------------------------------------------------------- runtime

# Building a worker constructs its Kafka producer, and librdkafka connects to the bootstrap
# servers at once: so the workers' modules are imported, not built, and the start-up work
# of a build that needs no connection (the matcher's token weights) is done explicitly.
RUNTIME_CHECK = """
import importlib, json, pkgutil, sys
import popsync.cli
import popsync.ops
from popsync.identity import default_token_weights
for name in popsync.cli.SERVICE_MODULES.values():
    assert callable(importlib.import_module(name).build), name
for info in pkgutil.iter_modules(popsync.ops.__path__, "popsync.ops."):
    importlib.import_module(info.name)
default_token_weights()
dev = [name for name in sys.modules if name == "popsync.dev" or name.startswith("popsync.dev.")]
print(json.dumps(sorted(dev)))
"""


def test_workers_and_operator_tools_run_without_dev() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("POPSYNC_")}
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_CHECK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


# ---------------------------------------------------------------------------------- domain


@pytest.mark.parametrize(
    "path", sources("popsync/domain"), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_the_domain_knows_no_kafka_sql_or_runtime(path: Path) -> None:
    assert violations(path, NOT_IN_DOMAIN) == []
