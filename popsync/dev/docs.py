"""The generated parts of the docs, so that they cannot drift from the code.

- `docs/configuration.md`, whole, from the settings model (`popsync.settings.Settings`);
- `docs/openapi.json`, whole, the verification service's OpenAPI document (`popsync serve`
  serves the same at /openapi.json);
- in `README.md` and `docs/architecture.md`, the blocks between
  `<!-- BEGIN generated: popsync topology --format FORMAT -->` and `<!-- END generated -->`,
  from the topology's renderers (`popsync.topology.markdown`, `mermaid`).

`python -m popsync.dev.docs` (`make docs`) rewrites them; `--check` (CI) changes nothing and
exits 1 if any is stale. Both render the settings' defaults, never the environment, so the
result does not depend on who runs it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import posixpath
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from popsync import topology
from popsync.contract.schemas import SCHEMA_DIR_ENV
from popsync.settings import WORKER_NAMES, Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = "docs/configuration.md"
OPENAPI = "docs/openapi.json"
# Files with topology blocks, relative to the repository root.
TOPOLOGY_DOCS = ("README.md", "docs/architecture.md")
SCHEMAS = "schemas/avro"
BEGIN = "<!-- BEGIN generated: popsync topology --format {fmt} -->"
END = "<!-- END generated -->"
_BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN generated: popsync topology --format (?P<fmt>[a-z]+) -->\n)"
    r"(?P<old>(?:.*?\n)??)" + re.escape(END),  # possibly empty
    re.DOTALL,
)


class DocsError(Exception):
    """A document the generator cannot fill (a marker missing or unknown)."""


class _Defaults(Settings):
    """The settings' defaults alone: environment variables and `.env` files are ignored."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def default_settings() -> Settings:
    return _Defaults()


# -- docs/configuration.md ---------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One row of docs/configuration.md."""

    variable: str
    type: str
    default: str
    description: str


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        values = [f"`{value}`" for value in get_args(annotation)]
        return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        present = [arg for arg in args if arg is not type(None)]
        name = " or ".join(_type_name(arg) for arg in present)
        return f"{name}, optional" if len(present) < len(args) else name
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


def _type(field: FieldInfo) -> str:
    bounds = [
        f"{sign} {getattr(item, attr)}"
        for item in field.metadata
        for attr, sign in _BOUNDS
        if getattr(item, attr, None) is not None
    ]
    return ", ".join([_type_name(field.annotation), *bounds])


def _default(value: Any) -> str:
    if isinstance(value, SecretStr):
        # A default credential must not be published, even a development one.
        return "`***`" if value.get_secret_value() else '`""`'
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`" if value != "" else '`""`'


def _fallback_description(section: str, name: str) -> str:
    """What a field without its own description means, where the code already says it."""
    if section == "topics":
        # A topic's role is the name of its TopicSettings field.
        for decl in topology.TOPICS:
            if decl.role == name:
                return f"Name of the topic carrying {decl.carries}"
    if section == "groups" and name.replace("_", "-") in WORKER_NAMES:
        return f"Consumer group of `popsync worker {name.replace('_', '-')}`"
    return ""


def settings_rows() -> dict[str, list[Setting]]:
    """Every setting with its default, by section (`""` for those outside any section), in
    the model's order."""
    defaults = default_settings()
    prefix = Settings.model_config.get("env_prefix", "")
    nesting = Settings.model_config.get("env_nested_delimiter") or "__"
    sections: dict[str, list[Setting]] = {"": []}

    def rows(model: BaseModel, variable: str, section: str) -> Iterator[Setting]:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            env = f"{variable}{name.upper()}"
            if _section_model(field) is not None:
                yield from rows(value, env + nesting, section)
                continue
            description = field.description or _fallback_description(section, name)
            yield Setting(env, _type(field), _default(value), description)

    for name, field in Settings.model_fields.items():
        if _section_model(field) is None:
            value = getattr(defaults, name)
            description = field.description or ""
            sections[""].append(
                Setting(f"{prefix}{name.upper()}", _type(field), _default(value), description)
            )
        else:
            env = f"{prefix}{name.upper()}{nesting}"
            sections[name] = list(rows(getattr(defaults, name), env, name))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = doc.strip().split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "`")


def configuration_markdown() -> str:
    """docs/configuration.md: one table per settings section."""
    lines = [
        "<!-- GENERATED by `python -m popsync.dev.docs` (`make docs`) from popsync/settings.py:",
        "     edit the settings and their descriptions there, never this file. -->",
        "",
        "# Configuration",
        "",
        "Every setting comes from an environment variable: prefix `POPSYNC_`, then the",
        "section, `__`, and the field (pydantic-settings, class `Settings` in",
        "`popsync/settings.py`), e.g. `POPSYNC_KAFKA__BOOTSTRAP_SERVERS=kafka:9092`. Settings",
        "are read once, at start, and never change. Secrets are never printed: a secret's",
        "default shows as `***`.",
        "",
        f"One variable is not a setting: `{SCHEMA_DIR_ENV}`, the folder of the `.avsc` files",
        "(default: `schemas/avro` of the checkout; the container image sets it). The embedded",
        "stack (`popsync demo`, the integration tests) shortens the Kafka session timeout and",
        "fetch wait for its broker (`popsync/dev/stack.py`).",
    ]
    for section, rows in settings_rows().items():
        title = "General" if section == "" else f"`{section}`"
        lines += ["", f"## {title}", ""]
        if section:
            model = _section_model(Settings.model_fields[section])
            # Only a docstring of the section's own class, not one inherited.
            intro = _first_paragraph(model.__dict__.get("__doc__") if model else None)
            if intro:
                lines += [intro, ""]
        lines += [
            "| Environment variable | Type | Default | Description |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{row.variable}` | {_cell(row.type)} | {_cell(row.default)} "
            f"| {_cell(row.description)} |"
            for row in rows
        ]
    return "\n".join(lines) + "\n"


# -- topology blocks ---------------------------------------------------------------------


def topology_block(fmt: str, document: str, settings: Settings | None = None) -> str:
    """The content of one block, for the document at `document` (relative to the root):
    links to the schemas are made relative to that document."""
    settings = settings if settings is not None else default_settings()
    if fmt == "markdown":
        schemas = posixpath.relpath(SCHEMAS, posixpath.dirname(document) or ".")
        return topology.markdown(settings, schemas=schemas)
    if fmt == "mermaid":
        return "```mermaid\n" + topology.mermaid(settings) + "```\n"
    raise DocsError(f"{document}: unknown generated block format {fmt!r}")


def fill_blocks(text: str, document: str, settings: Settings | None = None) -> str:
    """`text` with every topology block of it rendered again."""
    settings = settings if settings is not None else default_settings()
    found = False

    def render(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        if "<!-- BEGIN generated" in match.group("old"):
            raise DocsError(f"{document}: a generated block without its {END}")
        return match.group("begin") + topology_block(match.group("fmt"), document, settings) + END

    # A function, not a replacement string: the markdown has backslashes (`\|`).
    filled = _BLOCK.sub(render, text)
    if not found:
        raise DocsError(f"{document}: no block {BEGIN.format(fmt='…')} … {END}")
    return filled


# -- command line ------------------------------------------------------------------------


def openapi_json(settings: Settings) -> str:
    """The verification service's OpenAPI document, as its app renders it."""
    # Imported by name: `services/` is installed as popsync.services (see pyproject).
    service = importlib.import_module("popsync.services.verification.app")
    # The document does not depend on the key; the app refuses to be built without one.
    serve = settings.serve.model_copy(update={"audit_key": SecretStr("k" * 32)})
    app = service.create_app(settings.model_copy(update={"serve": serve}))
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False) + "\n"


def rendered(root: Path = ROOT) -> dict[str, str]:
    """Every generated document as it should be, by path relative to `root`."""
    settings = default_settings()
    documents = {CONFIGURATION: configuration_markdown(), OPENAPI: openapi_json(settings)}
    for document in TOPOLOGY_DOCS:
        text = (root / document).read_text(encoding="utf-8")
        documents[document] = fill_blocks(text, document, settings)
    return documents


def stale(root: Path = ROOT) -> dict[str, str]:
    """The generated documents under `root` that differ from what the code renders, with
    what they should be."""
    out_of_date = {}
    for document, text in rendered(root).items():
        path = root / document
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out_of_date[document] = text
    return out_of_date


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m popsync.dev.docs", description="Regenerate the generated docs."
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.root
    try:
        out_of_date = stale(root)
    except (DocsError, OSError) as error:
        print(f"popsync docs: {error}", file=sys.stderr)
        return 1
    if args.check:
        if out_of_date:
            print(
                f"popsync docs: out of date: {', '.join(out_of_date)} "
                "(run `make docs`, i.e. `python -m popsync.dev.docs`)",
                file=sys.stderr,
            )
            return 1
        return 0
    for document, text in out_of_date.items():
        (root / document).write_text(text, encoding="utf-8")
        print(f"wrote {document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
