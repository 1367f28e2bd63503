"""The pipeline, declared once: every topic popsync owns and what each worker does with it.

Follow an event: registries publish to `registry_events`; the validator checks it and
sends it to `validated_events`; the synchronizer merges it into the citizen, sends a
snapshot to `citizen_updates` for whoever follows the register, and writes it into the
`citizens` and `citizen_history` tables in the transaction that saves the citizen's state.
Anything a worker cannot process goes to `dead_letters`. The verification service
(`popsync serve`) answers partners from those tables over HTTP, with no Kafka, and audits
every answer. The backfill (`popsync backfill`), a job an operator runs, loads registry
archives into the same tables by the validator's and the synchronizer's rules, beside the
stream.

Everything else is derived from, or tested against, this declaration: topic
provisioning (`topic_specs`), each worker's subscriptions (`consumed_topics`), the
producer's size cap, `popsync topology` and the architecture doc's table
(`describe`, `mermaid`), the Kafka ACLs (`popsync acls`: each worker's `principal`, the
`EXTERNAL_PRINCIPALS`, the publisher directory), the PostgreSQL roles
(`database_grants`, `scratch_schemas`, deploy/postgres/roles.sql) and the deployment files
(tests/unit/deploy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from popsync.adapters.kafka.admin import TopicSpec
from popsync.settings import Settings, WorkerName

ServiceName = Literal["verification"]
JobName = Literal["backfill"]

DAY_MS = 24 * 3600 * 1000
# Largest event a registry may publish. A dead letter carries the original key and
# value plus about 1 KB of facts, so its topic takes twice that and some: parking an
# event can never fail for its size (which would stall the partition).
MAX_EVENT_BYTES = 1024 * 1024
MAX_DEAD_LETTER_BYTES = 2 * MAX_EVENT_BYTES + 64 * 1024

TopicRole = Literal[
    "registry_events",
    "validated_events",
    "dead_letters",
    "citizen_updates",
    "conflicts",
    "identity_assigned",
    "match_reviews",
    "unmatched_records",
]
"""A topic's part in the pipeline; its name is the `TopicSettings` field of the same name."""

CODEC = "Avro, popsync framing (schema fingerprint + record), popsync.contract.codec"


@dataclass(frozen=True)
class Topic:
    """One topic: what it carries, how it is keyed and how long it is kept."""

    role: TopicRole
    record: str  # the Avro record of its values, schemas/avro/vn.gov.popsync.<record>.avsc
    key: str
    retention_days: int | None  # None: compacted, the latest record per key kept forever
    max_message_bytes: int | None  # None: the broker's default
    carries: str

    def name(self, settings: Settings) -> str:
        name: str = getattr(settings.topics, self.role)
        return name

    def config(self) -> dict[str, str]:
        """The topic's Kafka configuration."""
        config: dict[str, str] = {}
        if self.retention_days is None:
            # The lag keeps every version readable for a week, so a reader of the
            # updates that catches up within it sees every version, with no gaps.
            config["cleanup.policy"] = "compact"
            config["min.compaction.lag.ms"] = str(7 * DAY_MS)
        else:
            config["retention.ms"] = str(self.retention_days * DAY_MS)
        if self.max_message_bytes is not None:
            config["max.message.bytes"] = str(self.max_message_bytes)
        return config


class _Client:
    """What a process that talks to Kafka and PostgreSQL as itself is known by, from its
    name: a worker's and a job's."""

    name: str

    @property
    def sasl_username(self) -> str:
        """Its Kafka user (POPSYNC_KAFKA__SASL_USERNAME where it runs) and, with
        underscores, its PostgreSQL role (`database_role`)."""
        return f"popsync-{self.name}"

    @property
    def principal(self) -> str:
        """The Kafka principal the broker sees for it (SASL/SCRAM): what its ACLs name."""
        return f"User:{self.sasl_username}"

    @property
    def database_role(self) -> str:
        return self.sasl_username.replace("-", "_")


@dataclass(frozen=True)
class Worker(_Client):
    """One kind of worker: the topics it consumes and produces, the tables it writes."""

    name: WorkerName
    consumes: tuple[TopicRole, ...]
    produces: tuple[TopicRole, ...]
    writes: tuple[str, ...]  # PostgreSQL tables
    does: str


@dataclass(frozen=True)
class ExternalPrincipal:
    """A Kafka user outside the workers that popsync's ACLs name: operators and tools.

    `reads` are read without a consumer group (assign, as `popsync dlq` does), `writes`
    are produced to, `watches` are workers whose group offsets it describes (lag).
    """

    sasl_username: str
    reads: tuple[TopicRole, ...]
    writes: tuple[TopicRole, ...]
    watches: tuple[WorkerName, ...]
    who: str

    @property
    def principal(self) -> str:
        return f"User:{self.sasl_username}"


@dataclass(frozen=True)
class HttpService:
    """A process that answers HTTP requests instead of consuming topics: no Kafka user, no
    ACL, one PostgreSQL role. What that role may do is split by kind of write, so that a
    table of rows never changed gets INSERT alone.
    """

    name: ServiceName  # its app.kubernetes.io/component and its Prometheus job's suffix
    command: str  # the `popsync` subcommand that runs it
    public_prefix: str  # the only paths an ingress may route from outside the cluster
    reads: tuple[str, ...]  # SELECT
    appends: tuple[str, ...]  # INSERT only
    updates: tuple[str, ...]  # SELECT, INSERT, UPDATE; never DELETE
    does: str

    @property
    def writes(self) -> tuple[str, ...]:
        return self.appends + self.updates

    @property
    def deployment(self) -> str:
        """popsync-<name>: its Deployment, Service, ServiceMonitor and Prometheus job
        (compose names its service for the command: popsync-<command>)."""
        return f"popsync-{self.name}"

    @property
    def database_role(self) -> str:
        return self.deployment.replace("-", "_")


@dataclass(frozen=True)
class Job(_Client):
    """A process an operator runs to its end, instead of a worker that consumes for ever: it
    reads its input from files, so it has a Kafka user that produces and never consumes (no
    topic read, no group), and one PostgreSQL role. What that role may do is split by kind
    of write, so that no row of the pipeline's tables can be deleted by a job.
    """

    name: JobName  # its app.kubernetes.io/component
    command: str  # the `popsync` subcommand that runs it
    produces: tuple[TopicRole, ...]
    reads: tuple[str, ...]  # SELECT
    writes: tuple[str, ...]  # SELECT, INSERT, UPDATE: the pipeline's tables; never DELETE
    owns: tuple[str, ...]  # every DML privilege: its own bookkeeping
    # Whether it creates tables of its own while it runs (and drops them): it gets a schema
    # of its own for them (`scratch_schemas`), never CREATE on the pipeline's.
    creates_tables: bool
    does: str

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table it writes."""
        return self.writes + self.owns


TOPICS: tuple[Topic, ...] = (
    Topic(
        "registry_events",
        "RegistryEvent",
        "subject PIN (or the identifier the registry knows)",
        30,
        MAX_EVENT_BYTES,
        "events as registries publish them",
    ),
    Topic(
        "validated_events",
        "RegistryEvent",
        "subject PIN",
        7,
        MAX_EVENT_BYTES,
        "events that passed every rule, normalized",
    ),
    Topic(
        "dead_letters",
        "DeadLetter",
        "original key",
        90,  # long enough for a fix and a replay
        MAX_DEAD_LETTER_BYTES,
        "what a worker could not process: original bytes, where it was read, stage, reason",
    ),
    Topic(
        "citizen_updates",
        "CitizenUpdate",
        "PIN",
        None,
        None,
        "full snapshot after each applied event, the changed fields, the version",
    ),
    Topic(
        "conflicts",
        "MergeConflict",
        "PIN",
        90,
        None,
        "valid events that contradict the citizen's state, and their resolution",
    ),
    Topic(
        "identity_assigned",
        "IdentityAssigned",
        "PIN",
        30,  # registries read their allocated PINs here; kept as long as the input
        None,
        "PINs allocated to births registered without one, for the registering registry",
    ),
    Topic(
        "match_reviews",
        "MatchReview",
        "record key",
        90,  # the reviews themselves stay in PostgreSQL until resolved; this notifies
        None,
        "sector records whose best match needs an operator (`popsync review`)",
    ),
    Topic(
        "unmatched_records",
        "UnmatchedRecord",
        "record key",
        90,
        None,
        "sector records that match no citizen, for the sector database to correct",
    ),
)

WORKERS: tuple[Worker, ...] = (
    Worker(
        "validator",
        consumes=("registry_events",),
        produces=(
            "validated_events",
            "dead_letters",
            "identity_assigned",
            "match_reviews",
            "unmatched_records",
        ),
        writes=(
            "pin_serials",
            "pin_allocations",
            "citizen_aliases",
            "match_decisions",
            "match_reviews",
            "source_quarantine",
        ),
        does="decode, check the contract and the rules, normalize; allocate PINs to births "
        "without one; match sector records without a PIN; park a quarantined source's events",
    ),
    Worker(
        "synchronizer",
        consumes=("validated_events",),
        produces=("citizen_updates", "conflicts", "dead_letters"),
        writes=(
            "sync_citizen_state",
            "citizens",
            "citizen_history",
            "citizen_conflicts",
            "source_quarantine",
        ),
        does="merge each event into its citizen's state by the merge rules; write the "
        "snapshots, history and conflicts into the central store with that state",
    ),
)

# Readers of citizen updates and conflicts: none of popsync's (the synchronizer writes the
# store itself); they are the register's feed, granted to a follower by an ACL of its own.
# Readers of dead letters: the operator only. No other principal is granted anything
# (the broker refuses what no ACL allows); registries are granted one topic each by
# `popsync acls`, from the publisher directory.
EXTERNAL_PRINCIPALS: tuple[ExternalPrincipal, ...] = (
    ExternalPrincipal(
        "popsync-operator",
        reads=("dead_letters",),
        # `popsync review` re-sends linked sector records, `popsync dlq replay` what the
        # validator parked. Never validated events: only the validator writes those.
        writes=("registry_events",),
        watches=(),
        who="operators: popsync dlq list/replay, popsync review",
    ),
    ExternalPrincipal(
        "popsync-autoscaler",
        reads=(),
        writes=(),
        watches=("validator", "synchronizer"),
        who="KEDA's Kafka scaler (deploy/k8s/overlays/production): each worker's lag",
    ),
)
# Tables each worker reads but does not write; with `Worker.writes`, its PostgreSQL grants
# (deploy/postgres/roles.sql, checked against this by tests/unit/deploy).
DATABASE_READS: dict[WorkerName, tuple[str, ...]] = {
    "validator": ("citizens", "sync_citizen_state", "publishers", "publisher_keys"),
    "synchronizer": (),
}
# The one super user: creates topics and applies the ACLs (`popsync topics create`,
# `popsync acls --apply`); no worker, operator or registry runs as it.
ADMIN_USERNAME = "popsync-admin"

HTTP_SERVICES: tuple[HttpService, ...] = (
    HttpService(
        "verification",
        command="serve",
        # /healthz, /readyz, /metrics and /openapi.json are for probes and Prometheus.
        public_prefix="/v1/",
        reads=("citizens", "partners", "partner_keys"),
        appends=("access_audit",),
        updates=("partner_usage",),  # daily quotas, leased by every process alike
        does="answer partners' verifications and look-ups from the central store, within "
        "each partner's purposes, rate and daily quota; audit every answer",
    ),
)

JOBS: tuple[Job, ...] = (
    Job(
        "backfill",
        command="backfill",
        # The validator's outputs but validated events (the archive is merged in the job
        # itself, not through the stream), and its dead letters: never citizen updates.
        produces=("dead_letters", "identity_assigned", "match_reviews", "unmatched_records"),
        reads=("publishers", "publisher_keys"),  # the archives' signatures
        # The validator's identity tables, the synchronizer's states and store rows: what
        # the two would have written for the same events.
        writes=(
            "pin_serials",
            "pin_allocations",
            "citizen_aliases",
            "match_decisions",
            "match_reviews",
            "sync_citizen_state",
            "citizens",
            "citizen_history",
            "citizen_conflicts",
        ),
        owns=("backfill_runs", "backfill_parts"),  # `--restart` deletes a run
        creates_tables=True,  # each run's UNLOGGED staging, dropped when it finishes
        does="load signed registry archives into the central store by the validator's and "
        "the synchronizer's rules, resumably (an operator runs it)",
    ),
)

# Tables whose rows are never changed or removed: no role is granted UPDATE or DELETE on
# them (`database_grants`), and a trigger refuses both and TRUNCATE, even to the owner
# (schema.sql).
APPEND_ONLY_TABLES: tuple[str, ...] = ("access_audit",)

# Tables no worker or service writes: operators change them (`popsync publishers`,
# `popsync keys`, `popsync partners`), with an audit row each; the validator only reads the
# publisher directory, the verification service the partner directory.
OPERATOR_TABLES: tuple[str, ...] = (
    "publishers",
    "publisher_keys",
    "publisher_audit",
    "partners",
    "partner_keys",
    "partner_audit",
)

# Table privileges by name, as roles.sql spells them.
ALL_DML = "SELECT, INSERT, UPDATE, DELETE"
Grants = dict[str, tuple[str, ...]]  # privileges -> tables


def database_grants() -> dict[str, Grants]:
    """Each PostgreSQL role's table privileges, by role: a worker gets all of them on what
    it writes and SELECT on what it reads (`DATABASE_READS`); a service and a job exactly
    what their declarations say. deploy/postgres/roles.sql grants this (tests/unit/deploy
    check it)."""
    grants: dict[str, Grants] = {}
    for w in WORKERS:
        grants[w.database_role] = {ALL_DML: w.writes}
        if DATABASE_READS[w.name]:
            grants[w.database_role]["SELECT"] = DATABASE_READS[w.name]
    for s in HTTP_SERVICES:
        by_privileges = {
            "SELECT": s.reads,
            "INSERT": s.appends,
            "SELECT, INSERT, UPDATE": s.updates,
        }
        grants[s.database_role] = {p: tables for p, tables in by_privileges.items() if tables}
    for j in JOBS:
        by_privileges = {"SELECT": j.reads, "SELECT, INSERT, UPDATE": j.writes, ALL_DML: j.owns}
        grants[j.database_role] = {p: tables for p, tables in by_privileges.items() if tables}
    return grants


def scratch_schemas() -> dict[str, str]:
    """The schema each role that creates tables creates them in, by role: one of its own,
    named as the role, which PostgreSQL's default search_path ("$user", public) puts first,
    so its unqualified CREATE TABLE lands there while every other name resolves to the
    pipeline's tables in public. No role may create anything in public: a table or function
    planted there could be picked up by another role's queries. deploy/postgres/roles.sql
    makes these schemas (tests/unit/deploy check it)."""
    return {j.database_role: j.database_role for j in JOBS if j.creates_tables}


_TOPICS_BY_ROLE = {topic.role: topic for topic in TOPICS}
_WORKERS_BY_NAME = {worker.name: worker for worker in WORKERS}
_SERVICES_BY_NAME = {service.name: service for service in HTTP_SERVICES}
_JOBS_BY_NAME = {job.name: job for job in JOBS}


def topic(role: TopicRole) -> Topic:
    return _TOPICS_BY_ROLE[role]


def worker(name: WorkerName) -> Worker:
    return _WORKERS_BY_NAME[name]


def http_service(name: ServiceName) -> HttpService:
    return _SERVICES_BY_NAME[name]


def job(name: JobName) -> Job:
    return _JOBS_BY_NAME[name]


def _names(settings: Settings, roles: tuple[TopicRole, ...]) -> list[str]:
    return [topic(role).name(settings) for role in roles]


def consumed_topics(settings: Settings, name: WorkerName) -> list[str]:
    """The names of the topics worker `name` subscribes to."""
    return _names(settings, worker(name).consumes)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic to provision; one partition count for all, so a PIN keeps its partition
    number through the pipeline."""
    t = settings.topics
    return [
        TopicSpec(decl.name(settings), t.partitions, t.replication_factor, decl.config())
        for decl in TOPICS
    ]


# Renderers: `popsync topology` prints them with the current settings, so a renamed topic
# (POPSYNC_TOPICS__*) shows under its real name; docs paste the markdown and mermaid.

REGISTRIES = "registries"  # outside popsync: they publish to `registry_events`
PARTNERS = "partners"  # outside popsync: they call the HTTP services


def _size(limit: int | None) -> str:
    if limit is None:
        return "broker default"
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit // 1024} KiB"


def _retention(decl: Topic) -> str:
    if decl.retention_days is None:
        return "compacted (latest per key)"
    return f"{decl.retention_days} days"


def describe(settings: Settings) -> str:
    """The topology as plain text, for a terminal."""
    t = settings.topics
    lines = ["Topics"]
    for decl in TOPICS:
        lines += [
            f"  {decl.name(settings)}  ({decl.role})",
            f"    value       {decl.record}",
            f"    key         {decl.key}",
            f"    kept        {_retention(decl)}",
            f"    max size    {_size(decl.max_message_bytes)}",
            f"    partitions  {t.partitions} (replication factor {t.replication_factor})",
            f"    carries     {decl.carries}",
        ]
    lines += ["", "Workers"]
    for w in WORKERS:
        lines += [
            f"  popsync worker {w.name}  (group {settings.groups.for_worker(w.name)})",
            f"    consumes    {', '.join(_names(settings, w.consumes))}",
            f"    produces    {', '.join(_names(settings, w.produces))}",
            f"    writes      {', '.join(w.writes)}",
            f"    does        {w.does}",
        ]
    lines += ["", "Services"]
    for s in HTTP_SERVICES:
        lines += [
            f"  popsync {s.command}  ({s.name}, HTTP on port {settings.serve.port})",
            f"    public      {s.public_prefix}",
            f"    reads       {', '.join(s.reads)}",
            f"    appends     {', '.join(s.appends)}",
            f"    updates     {', '.join(s.updates)}",
            f"    does        {s.does}",
        ]
    lines += ["", "Jobs"]
    for j in JOBS:
        lines += [
            f"  popsync {j.command}  ({j.name}, run by an operator)",
            f"    produces    {', '.join(_names(settings, j.produces))}",
            f"    reads       {', '.join(j.reads)}",
            f"    writes      {', '.join(j.tables)}",
            f"    does        {j.does}",
        ]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _codes(items: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f"`{item}`" for item in items)


def markdown(settings: Settings, schemas: str = "schemas/avro") -> str:
    """Four markdown tables, topics, workers, services and jobs; `schemas` is the Avro folder
    as the document's reader reaches it (relative to the repository root by default)."""
    lines = [
        "| Topic | Key | Value | Retention | Carries |",
        "|---|---|---|---|---|",
    ]
    for decl in TOPICS:
        record = f"[`{decl.record}`]({schemas}/vn.gov.popsync.{decl.record}.avsc)"
        lines.append(
            f"| `{decl.name(settings)}` | {_cell(decl.key)} | {record} "
            f"| {_retention(decl)} | {_cell(decl.carries)} |"
        )
    lines += [
        "",
        "| Worker | Consumes | Produces | Writes (PostgreSQL) | Does |",
        "|---|---|---|---|---|",
    ]
    for w in WORKERS:
        lines.append(
            f"| `popsync worker {w.name}` | {_codes(_names(settings, w.consumes))} "
            f"| {_codes(_names(settings, w.produces))} | {_codes(w.writes)} "
            f"| {_cell(w.does)} |"
        )
    lines += [
        "",
        "| Service | Public paths | Reads | Writes (PostgreSQL) | Does |",
        "|---|---|---|---|---|",
    ]
    for s in HTTP_SERVICES:
        lines.append(
            f"| `popsync {s.command}` | `{s.public_prefix}` | {_codes(s.reads)} "
            f"| {_codes(s.writes)} | {_cell(s.does)} |"
        )
    lines += [
        "",
        "| Job | Produces | Reads | Writes (PostgreSQL) | Does |",
        "|---|---|---|---|---|",
    ]
    for j in JOBS:
        lines.append(
            f"| `popsync {j.command}` | {_codes(_names(settings, j.produces))} "
            f"| {_codes(j.reads)} | {_codes(j.tables)} | {_cell(j.does)} |"
        )
    return "\n".join(lines) + "\n"


def _id(kind: str, name: str) -> str:
    # Mermaid ids are letters, digits and underscores; the prefix keeps the topic and
    # the table both called match_reviews apart.
    return f"{kind}_{name.replace('-', '_')}"


def mermaid(settings: Settings) -> str:
    """A mermaid flowchart (no fences): registries -> topics -> workers -> topics,
    workers -> PostgreSQL tables, partners -> services -> tables. One line per edge. The
    jobs are left out: they write what the workers write, and the README that shows this
    picture is a front page (`describe` and `markdown` list them)."""
    lines = ["flowchart LR", f'  {REGISTRIES}(["registries"])']
    lines += [f'  {_id("t", d.role)}[["{d.name(settings)}"]]' for d in TOPICS]
    lines += [f'  {_id("w", w.name)}("popsync worker {w.name}")' for w in WORKERS]
    if HTTP_SERVICES:
        lines.append(f'  {PARTNERS}(["partners"])')
    lines += [f'  {_id("s", s.name)}("popsync {s.command}")' for s in HTTP_SERVICES]
    written = [table for w in WORKERS for table in w.writes]
    tables = dict.fromkeys(written + [t for s in HTTP_SERVICES for t in s.writes])
    lines.append('  subgraph postgres["PostgreSQL"]')
    lines += [f'    {_id("db", table)}[("{table}")]' for table in tables]
    lines.append("  end")
    lines.append(f"  {REGISTRIES} --> {_id('t', 'registry_events')}")
    for w in WORKERS:
        lines += [f"  {_id('t', role)} --> {_id('w', w.name)}" for role in w.consumes]
        lines += [f"  {_id('w', w.name)} --> {_id('t', role)}" for role in w.produces]
        lines += [f"  {_id('w', w.name)} --> {_id('db', table)}" for table in w.writes]
    for s in HTTP_SERVICES:
        lines.append(f"  {PARTNERS} --> {_id('s', s.name)}")
        lines += [f"  {_id('s', s.name)} --> {_id('db', table)}" for table in s.writes]
    return "\n".join(lines) + "\n"
