"""The topology declaration agrees with the settings, the contract and the schema, and
everything rendered from it shows every topic, worker, HTTP service and job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest

from popsync import cli, topology
from popsync.dev.stack import EmbeddedStack
from popsync.settings import WORKER_NAMES, Settings, TopicSettings
from popsync.topology import (
    APPEND_ONLY_TABLES,
    DATABASE_READS,
    DAY_MS,
    HTTP_SERVICES,
    JOBS,
    TOPICS,
    WORKERS,
    JobName,
    ServiceName,
    TopicRole,
    database_grants,
    scratch_schemas,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA_SQL = REPO / "popsync" / "adapters" / "postgres" / "schema.sql"
AVRO = REPO / "schemas" / "avro"
INPUT = "registry_events"  # published by the registries, outside popsync

# Every name differs from the default, as in a test's isolated pipeline.
RENAMED = Settings(
    topics=TopicSettings(
        **{role: f"renamed.{role}" for role in get_args(TopicRole)},
        partitions=3,
        replication_factor=2,
    )
)


def topic_fields() -> set[str]:
    return {name for name, f in TopicSettings.model_fields.items() if f.annotation is str}


def test_each_topic_setting_has_exactly_one_topic() -> None:
    roles = [decl.role for decl in TOPICS]
    assert len(roles) == len(set(roles)), "a topic declared twice"
    assert set(roles) == topic_fields()
    assert set(get_args(TopicRole)) == topic_fields()


def test_workers_are_the_worker_names_in_order() -> None:
    assert tuple(w.name for w in WORKERS) == WORKER_NAMES


def test_every_record_has_its_schema_file() -> None:
    for decl in TOPICS:
        assert (AVRO / f"vn.gov.popsync.{decl.record}.avsc").is_file(), decl.role


def test_every_consumed_topic_has_a_producer() -> None:
    produced = {role for w in WORKERS for role in w.produces}
    for w in WORKERS:
        for role in w.consumes:
            assert role in produced or role == INPUT, f"{w.name} consumes {role}: no producer"
    # And nothing popsync keeps is written by nobody.
    assert {decl.role for decl in TOPICS} == produced | {INPUT}


def schema_tables() -> set[str]:
    sql = SCHEMA_SQL.read_text(encoding="utf-8")
    return set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", sql, re.IGNORECASE))


def test_written_tables_are_the_schema_tables() -> None:
    tables = schema_tables()
    written = {table for w in WORKERS for table in w.writes} | set(topology.OPERATOR_TABLES)
    written |= {table for s in HTTP_SERVICES for table in s.writes}
    written |= {table for j in JOBS for table in j.tables}
    assert written <= tables, f"not in schema.sql: {sorted(written - tables)}"
    assert tables <= written, f"no worker or operator declares writing: {sorted(tables - written)}"


def test_read_tables_are_schema_tables_and_not_also_written() -> None:
    tables = schema_tables()
    for w in WORKERS:
        reads = set(DATABASE_READS[w.name])
        assert reads <= tables, w.name
        assert not reads & set(w.writes), f"{w.name} reads what it writes"
    for s in HTTP_SERVICES:
        assert set(s.reads) | set(s.writes) <= tables, s.name
        assert len(s.reads + s.appends + s.updates) == len(set(s.reads + s.writes)), s.name
    for j in JOBS:
        assert set(j.reads) | set(j.tables) <= tables, j.name
        assert len(j.reads + j.tables) == len(set(j.reads + j.tables)), j.name


def test_http_services_and_jobs_are_their_names_and_own_one_role_each() -> None:
    assert tuple(s.name for s in HTTP_SERVICES) == get_args(ServiceName)
    assert tuple(j.name for j in JOBS) == get_args(JobName)
    roles = [w.database_role for w in WORKERS] + [s.database_role for s in HTTP_SERVICES]
    roles += [j.database_role for j in JOBS]
    assert len(roles) == len(set(roles))
    assert set(database_grants()) == set(roles)
    users = [w.sasl_username for w in WORKERS] + [j.sasl_username for j in JOBS]
    assert len(users) == len(set(users))
    for s in HTTP_SERVICES:
        assert s.public_prefix.startswith("/") and s.public_prefix.endswith("/"), s.name


def test_the_backfill_writes_what_the_stream_writes_for_the_same_events() -> None:
    """The backfill runs the validator's step and the synchronizer's merge and writes the
    synchronizer's rows: the same tables (but the quarantine, which defends the live
    stream), and the validator's outputs but the validated events, which it merges
    itself."""
    backfill = topology.job("backfill")
    stream = {t for w in WORKERS for t in w.writes}
    assert set(backfill.writes) == stream - {"source_quarantine"}
    assert set(backfill.reads) == {"publishers", "publisher_keys"}
    assert set(backfill.owns) == {"backfill_runs", "backfill_parts"}
    validator = topology.worker("validator")
    assert set(backfill.produces) == set(validator.produces) - {"validated_events"}


def test_jobs_may_delete_only_their_own_rows_and_create_only_in_their_own_schema() -> None:
    grants = database_grants()
    for j in JOBS:
        for privileges, tables in grants[j.database_role].items():
            if "DELETE" in privileges:
                assert set(tables) == set(j.owns), j.name
        assert not set(j.owns) & {t for w in WORKERS for t in w.writes}, j.name
        if j.creates_tables:
            assert scratch_schemas()[j.database_role] == j.database_role
    assert set(scratch_schemas()) == {j.database_role for j in JOBS if j.creates_tables}
    assert "public" not in scratch_schemas().values()


def test_append_only_tables_are_never_changed() -> None:
    """No role is granted UPDATE or DELETE on them, no worker writes them, and the schema's
    trigger refuses both (and TRUNCATE) to everyone."""
    sql = SCHEMA_SQL.read_text(encoding="utf-8")
    for table in APPEND_ONLY_TABLES:
        assert table in schema_tables(), table
        assert not [w.name for w in WORKERS if table in w.writes], table
        assert not [j.name for j in JOBS if table in j.tables], table
        for role, grants in database_grants().items():
            for privileges, tables in grants.items():
                if table in tables:
                    assert privileges == "INSERT", (role, table, privileges)
        trigger = rf"BEFORE UPDATE OR DELETE OR TRUNCATE\s+ON {table} FOR EACH STATEMENT"
        assert re.search(trigger, sql), f"{table}: no trigger refusing changes"


def test_topic_specs_are_the_declaration() -> None:
    specs = topology.topic_specs(RENAMED)
    assert [spec.name for spec in specs] == [f"renamed.{decl.role}" for decl in TOPICS]
    for decl, spec in zip(TOPICS, specs, strict=True):
        assert (spec.partitions, spec.replication_factor) == (3, 2)
        config = dict(spec.config)
        if decl.retention_days is None:
            assert config["cleanup.policy"] == "compact", decl.role
            assert "retention.ms" not in config, decl.role
        else:
            assert config.get("cleanup.policy", "delete") == "delete", decl.role
            assert int(config["retention.ms"]) == decl.retention_days * DAY_MS, decl.role
        expected_size = decl.max_message_bytes and str(decl.max_message_bytes)
        assert config.get("max.message.bytes") == expected_size, decl.role


def test_consumed_topics_follow_the_settings() -> None:
    for w in WORKERS:
        assert topology.consumed_topics(RENAMED, w.name) == [f"renamed.{r}" for r in w.consumes]


def test_isolated_settings_rename_every_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The integration tests' pipelines (one per test) share no topic with each other."""

    def settings_for(_: EmbeddedStack, database: str = "popsync", **overrides: Any) -> Settings:
        return Settings(**overrides)  # no database or broker needed to name topics

    monkeypatch.setattr(EmbeddedStack, "settings_for", settings_for)
    stack = EmbeddedStack(Path("unused"))
    names = [spec.name for spec in topology.topic_specs(stack.isolated_settings("t1"))]
    defaults = [spec.name for spec in topology.topic_specs(Settings())]
    assert names == [f"t1.{name}" for name in defaults]


@pytest.mark.parametrize("fmt", ["text", "markdown", "mermaid"])
def test_cli_prints_every_topic_and_worker(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POPSYNC_TOPICS__CONFLICTS", "renamed.conflicts")
    assert cli.main(["topology", "--format", fmt]) == 0
    out = capsys.readouterr().out
    settings = Settings()
    assert settings.topics.conflicts == "renamed.conflicts"
    for decl in TOPICS:
        assert decl.name(settings) in out, (fmt, decl.role)
    for w in WORKERS:
        assert f"popsync worker {w.name}" in out, (fmt, w.name)
    for s in HTTP_SERVICES:
        assert f"popsync {s.command}" in out, (fmt, s.name)
    for j in JOBS:
        if fmt != "mermaid":  # a front page's picture (`topology.mermaid`)
            assert f"popsync {j.command}" in out, (fmt, j.name)


def test_cli_defaults_to_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topology"]) == 0
    assert capsys.readouterr().out == topology.describe(Settings())


MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def test_mermaid_has_one_line_per_edge() -> None:
    text = topology.mermaid(Settings())
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert "```" not in text
    edges = [tuple(line.strip().split(" --> ")) for line in lines if " --> " in line]
    for node in {node for edge in edges for node in edge}:
        assert MERMAID_ID.fullmatch(node), node
        assert node != "end", "a reserved word as an id"

    def t(role: str) -> str:
        return f"t_{role}"

    def w(name: str) -> str:
        return "w_" + name.replace("-", "_")

    expected = [("registries", t(INPUT))]
    for wk in WORKERS:
        expected += [(t(role), w(wk.name)) for role in wk.consumes]
        expected += [(w(wk.name), t(role)) for role in wk.produces]
        expected += [(w(wk.name), f"db_{table}") for table in wk.writes]
    for service in HTTP_SERVICES:
        expected.append(("partners", f"s_{service.name}"))
        expected += [(f"s_{service.name}", f"db_{table}") for table in service.writes]
    assert sorted(edges) == sorted(expected)  # the jobs: in the tables, not the picture
    # Every node is declared with its label.
    declared = {m.group(1) for m in re.finditer(r"^\s*(\w+)[\[(]", text, re.MULTILINE)}
    assert {node for edge in expected for node in edge} <= declared


def test_markdown_has_a_row_per_topic_and_worker() -> None:
    settings = Settings()
    rows = [line for line in topology.markdown(settings).splitlines() if line.startswith("| `")]
    assert len(rows) == len(TOPICS) + len(WORKERS) + len(HTTP_SERVICES) + len(JOBS)
    for decl in TOPICS:
        link = f"(schemas/avro/vn.gov.popsync.{decl.record}.avsc)"
        assert any(row.startswith(f"| `{decl.name(settings)}` |") and link in row for row in rows)
