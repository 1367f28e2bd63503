"""The Kafka ACLs follow from the topology and the publisher directory, and from nothing else."""

from __future__ import annotations

import io

import pytest

from popsync.ops import acls as acls_module
from popsync.ops.acls import Acl, derive_acls, kafka_acls
from popsync.settings import Settings
from popsync.topology import EXTERNAL_PRINCIPALS, JOBS, WORKERS, topic

PUBLISHERS = ("civil-status-79", "residence-01")


def _principals_in_topology() -> set[str]:
    declared = {w.principal for w in WORKERS} | {e.principal for e in EXTERNAL_PRINCIPALS}
    return declared | {j.principal for j in JOBS}


def _writers(acls: list[Acl], name: str) -> set[str]:
    return {a.principal for a in acls if a.resource_name == name and a.operation == "WRITE"}


def _readers(acls: list[Acl], name: str) -> set[str]:
    return {a.principal for a in acls if a.resource_name == name and a.operation == "READ"}


def test_every_principal_is_declared_in_the_topology_or_the_directory() -> None:
    acls = derive_acls(Settings(), PUBLISHERS)
    declared = _principals_in_topology() | {f"User:{p}" for p in PUBLISHERS}
    assert {a.principal for a in acls} == declared


def test_each_worker_reads_its_topics_with_its_group_and_writes_what_it_produces() -> None:
    settings = Settings()
    acls = set(derive_acls(settings, ()))
    for worker in WORKERS:
        group = settings.groups.for_worker(worker.name)
        assert Acl(worker.principal, "GROUP", group, "READ") in acls
        for role in worker.consumes:
            assert Acl(worker.principal, "TOPIC", topic(role).name(settings), "READ") in acls
        for role in worker.produces:
            assert Acl(worker.principal, "TOPIC", topic(role).name(settings), "WRITE") in acls
        mine = {
            a.resource_name
            for a in acls
            if a.principal == worker.principal and a.operation == "WRITE"
        }
        assert mine == {topic(role).name(settings) for role in worker.produces}, worker.name


def test_each_job_writes_what_it_produces_and_reads_nothing() -> None:
    """A job reads its input from files: no topic to read, no group to join."""
    settings = Settings()
    acls = derive_acls(settings, ())
    for job in JOBS:
        mine = {
            (a.resource_type, a.resource_name, a.operation)
            for a in acls
            if a.principal == job.principal
        }
        produced = {topic(role).name(settings) for role in job.produces}
        assert mine == {("TOPIC", n, op) for n in produced for op in ("WRITE", "DESCRIBE")}, (
            job.name
        )


def test_only_the_validator_writes_validated_events() -> None:
    settings = Settings()
    acls = derive_acls(settings, PUBLISHERS)
    assert _writers(acls, settings.topics.validated_events) == {"User:popsync-validator"}


def test_publishers_write_the_registry_events_topic_and_nothing_else() -> None:
    settings = Settings()
    acls = derive_acls(settings, PUBLISHERS)
    for publisher in PUBLISHERS:
        granted = {
            (a.resource_name, a.operation) for a in acls if a.principal == f"User:{publisher}"
        }
        assert granted == {
            (settings.topics.registry_events, "WRITE"),
            (settings.topics.registry_events, "DESCRIBE"),
        }


def test_readers_of_citizen_updates_and_dead_letters_are_named() -> None:
    """Citizen updates and conflicts are the register's output feed: the synchronizer writes
    them (and the store itself), and no popsync principal reads them; a follower of the
    feed is granted by an ACL of its own."""
    settings = Settings()
    acls = derive_acls(settings, PUBLISHERS)
    for feed in (settings.topics.citizen_updates, settings.topics.conflicts):
        assert _writers(acls, feed) == {"User:popsync-synchronizer"}, feed
        assert _readers(acls, feed) == set(), feed
    assert _readers(acls, settings.topics.dead_letters) == {"User:popsync-operator"}


def test_renamed_topics_and_groups_are_followed() -> None:
    settings = Settings(topics={"registry_events": "x.in"}, groups={"validator": "x-validator"})
    acls = set(derive_acls(settings, ("civil-status-79",)))
    assert Acl("User:civil-status-79", "TOPIC", "x.in", "WRITE") in acls
    assert Acl("User:popsync-validator", "GROUP", "x-validator", "READ") in acls


@pytest.mark.parametrize("bad", ["", "a b", "User:x", "x,y", "*"])
def test_a_publisher_id_that_is_no_principal_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be a Kafka principal"):
        derive_acls(Settings(), (bad,))


def test_print_is_one_line_per_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acls_module, "read_publisher_ids", lambda settings, out: list(PUBLISHERS))
    out = io.StringIO()
    assert kafka_acls(Settings(), apply=False, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines == [a.line() for a in derive_acls(Settings(), PUBLISHERS)]
    assert all(line.startswith("ALLOW User:") for line in lines)


def test_bindings_are_literal_allow_from_any_host() -> None:
    (acl, *_) = derive_acls(Settings(), ())
    binding = acl.binding()
    assert binding.host == "*"
    assert binding.resource_pattern_type.name == "LITERAL"
    assert binding.permission_type.name == "ALLOW"
