"""The layout of the tests: shared code lives in tests/builders.py, tests/fakes.py,
tests/polling.py and tests/signing.py, never in a test module or a conftest; fakes live in
tests/, never in production code."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
# what a test may import from tests
SHARED = {"tests.builders", "tests.fakes", "tests.polling", "tests.signing"}
FAKE_PREFIXES = ("InMemory", "Fake", "Recording", "Memory")


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _is_test_or_conftest(module: str) -> bool:
    return any(part.startswith("test_") or part == "conftest" for part in module.split("."))


def _imported(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) of each name an import statement binds, as the full name of the
    module it comes from and its own full name (which is a module's if it is one): `import
    a.b` gives (a.b, a.b); `from p import n`, (p, p.n). A relative p keeps its dots."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, alias.name
        elif isinstance(node, ast.ImportFrom):
            package = "." * node.level + (node.module or "")
            for alias in node.names:
                name = f"{package}.{alias.name}" if node.module else package + alias.name
                yield node.lineno, package, name


def _ours(module: str) -> bool:
    return module.startswith(".") or module == "tests" or module.startswith("tests.")


def _import_problem(module: str, name: str) -> str | None:
    for candidate in (module, name):
        if _ours(candidate) and _is_test_or_conftest(candidate):
            return f"imports {candidate}"
    source = name if module in ("tests", ".") else module  # `from tests import x`: x's
    if _ours(source) and not any(
        source == shared or source.startswith(f"{shared}.") for shared in SHARED
    ):
        return f"imports {source}, not one of {sorted(SHARED)}"
    return None


def _import_problems(source: str, where: str) -> list[str]:
    return [
        f"{where}:{line}: {problem}"
        for line, module, name in _imported(ast.parse(source, where))
        if (problem := _import_problem(module, name))
    ]


def test_tests_are_found() -> None:
    files = [p.name for p in _python_files(TESTS)]
    assert "test_tests_layout.py" in files and "builders.py" in files and "fakes.py" in files


@pytest.mark.parametrize("path", _python_files(TESTS), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_or_conftest_is_imported(path: Path) -> None:
    """A test module or conftest imports shared code from tests.builders, tests.fakes or
    tests.polling or tests.signing only (fixtures come through conftest.py, never by import)."""
    where = str(path.relative_to(ROOT))
    assert _import_problems(path.read_text(encoding="utf-8"), where) == []


def test_the_check_sees_every_way_of_importing_a_test_module() -> None:
    source = "\n".join(
        [
            "import tests.unit.domain.test_merge",
            "from tests.unit.domain.test_merge import story",
            "from tests.unit.domain import test_merge",
            "from tests.integration.conftest import eventually",
            "from . import test_aliases",
            "from .conftest import stack",
            "from tests.unit.helpers import thing",
            "from tests import helpers",
            "from tests.builders import birth_event",
            "from tests.fakes import RecordingProducer",
            "from tests import polling",
            "import pytest",
        ]
    )
    assert _import_problems(source, "probe.py") == [
        "probe.py:1: imports tests.unit.domain.test_merge",
        "probe.py:2: imports tests.unit.domain.test_merge",
        "probe.py:3: imports tests.unit.domain.test_merge",
        "probe.py:4: imports tests.integration.conftest",
        "probe.py:5: imports .test_aliases",
        "probe.py:6: imports .conftest",
        "probe.py:7: imports tests.unit.helpers, not one of "
        "['tests.builders', 'tests.fakes', 'tests.polling', 'tests.signing']",
        "probe.py:8: imports tests.helpers, not one of "
        "['tests.builders', 'tests.fakes', 'tests.polling', 'tests.signing']",
    ]


def _classes(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            yield node.lineno, node.name


def test_no_fake_is_defined_in_production_code() -> None:
    """Fakes of the ports live in tests/fakes.py; production modules keep the Protocols."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: class {name}"
        for folder in (ROOT / "popsync", ROOT / "services")
        for path in _python_files(folder)
        for line, name in _classes(path)
        if name.startswith(FAKE_PREFIXES)
    ]
    assert _python_files(ROOT / "popsync") and _python_files(ROOT / "services")
    assert found == []
