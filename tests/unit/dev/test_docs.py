"""The generated docs equal what the code renders, and the README stays a front page.

This is what keeps docs/configuration.md equal to the settings model and the topology
blocks of README.md and docs/architecture.md equal to `popsync topology`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from popsync import topology
from popsync.dev import docs
from popsync.settings import Settings

ROOT = docs.ROOT
RUN = "pip install -e . && popsync demo"
TEST = "pip install -e '.[dev]' && pytest"


def _read(document: str) -> str:
    return (ROOT / document).read_text(encoding="utf-8")


def _variables(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _variables(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}"


def test_configuration_doc_is_what_the_settings_render() -> None:
    assert _read(docs.CONFIGURATION) == docs.configuration_markdown(), "run `make docs`"


@pytest.mark.parametrize("document", docs.TOPOLOGY_DOCS)
def test_topology_blocks_are_what_the_topology_renders(document: str) -> None:
    assert _read(document) == docs.fill_blocks(_read(document), document), "run `make docs`"


def test_the_blocks_are_where_the_docs_promise_them() -> None:
    mermaid = "```mermaid\n" + topology.mermaid(docs.default_settings()) + "```\n"
    tables = topology.markdown(docs.default_settings(), schemas="../schemas/avro")
    readme, architecture = _read("README.md"), _read("docs/architecture.md")
    assert docs.BEGIN.format(fmt="mermaid") + "\n" + mermaid + docs.END in readme
    assert docs.BEGIN.format(fmt="mermaid") + "\n" + mermaid + docs.END in architecture
    assert docs.BEGIN.format(fmt="markdown") + "\n" + tables + docs.END in architecture


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = _read(docs.CONFIGURATION)
    variables = list(_variables(Settings, "POPSYNC_"))
    assert "POPSYNC_MATCHING__AUTO_LINK" in variables
    assert [v for v in variables if f"| `{v}` |" not in text] == []


def test_secret_defaults_are_masked() -> None:
    text = docs.configuration_markdown()
    dsn = Settings.model_fields["postgres"].default.dsn.get_secret_value()
    assert dsn and dsn not in text
    assert re.search(r"\| `POPSYNC_POSTGRES__DSN` \| secret \| `\*\*\*` \|", text)
    assert re.search(r"\| `POPSYNC_KAFKA__SASL_PASSWORD` \| secret, optional \| unset \|", text)


def test_rendering_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = docs.configuration_markdown(), docs.topology_block("mermaid", "README.md")
    monkeypatch.setenv("POPSYNC_TOPICS__DEAD_LETTERS", "elsewhere.dead-letters")
    monkeypatch.setenv("POPSYNC_POSTGRES__DSN", "postgresql://u:hunter2@db/x")
    after = docs.configuration_markdown(), docs.topology_block("mermaid", "README.md")
    assert after == before


def test_readme_is_a_front_page_with_the_two_commands_first() -> None:
    lines = _read("README.md").splitlines()
    assert len(lines) <= 150
    # Code is indented or fenced; a fence before the commands would show up first.
    code = [line.strip() for line in lines if line.startswith(("    ", "```"))]
    assert code[:2] == [RUN, TEST]


def test_check_names_the_stale_document_and_write_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for document in (docs.CONFIGURATION, *docs.TOPOLOGY_DOCS):
        (tmp_path / document).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / document, tmp_path / document)
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("t_dead_letters", "t_gone"), encoding="utf-8")
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "README.md" in message[0]
    assert "configuration.md" not in message[0]

    assert docs.main(["--root", str(tmp_path)]) == 0
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0
    assert readme.read_text(encoding="utf-8") == _read("README.md")


def test_a_document_without_its_block_is_an_error() -> None:
    with pytest.raises(docs.DocsError, match="no block"):
        docs.fill_blocks("# nothing generated here\n", "README.md")
    unterminated = docs.BEGIN.format(fmt="mermaid") + "\nold\n" + docs.BEGIN.format(fmt="x")
    with pytest.raises(docs.DocsError):
        docs.fill_blocks(unterminated + "\n" + docs.END + "\n", "README.md")
