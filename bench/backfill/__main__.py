"""``python -m bench.backfill`` / ``popsync bench backfill``: the floor (fastavro + COPY of
the same archives) and ``popsync backfill`` on N events, with the backfill's peak RSS."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.backfill import DEFAULT_EVENTS, DEFAULT_SEED, RESULTS
from bench.backfill.archive import BASE_EVENTS
from bench.backfill.run import Options, run


def parser(prog: str = "python -m bench.backfill") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="archive size, %(default)s")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="%(default)s")
    p.add_argument(
        "--base-events",
        type=int,
        default=BASE_EVENTS,
        help="events simulated once; the archive is copies of them with other citizens, "
        "%(default)s",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".popsync/bench"),
        help="archives are made once and kept here, %(default)s",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the broker's and PostgreSQL's data, the backfill's report, dead letters "
        "and log here (default: a temporary directory)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="the backfill's, seconds")
    p.add_argument("--output", default=str(RESULTS), help="JSON file ('-': stdout), %(default)s")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench.backfill") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    if args.events < 1 or args.base_events < 1:
        raise SystemExit("--events and --base-events must be positive")
    options = Options(
        events=args.events,
        seed=args.seed,
        base_events=args.base_events,
        cache_dir=args.cache_dir,
        workdir=args.workdir,
        timeout=args.timeout,
        command=" ".join([prog, shlex.join(argv)]).strip(),
    )
    result = run(options, say=lambda line: print(line, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    for line in bench_lines(result):
        print(line)
    return 0


def bench_lines(result: dict[str, object]) -> list[str]:
    """The figures a person reads at the end of a run."""
    keys = (
        "events",
        "events_per_second",
        "ratio_backfill_to_floor",
        "backfill_seconds",
        "ten_million_events_seconds",
        "ten_million_events_seconds_extrapolated",
        "peak_rss_mb",
        "cpu_us_per_event",
        "goals",
        "agreement",
        "cores_busy_otherwise",
    )
    return [json.dumps({key: result[key] for key in keys}, indent=2)]


if __name__ == "__main__":
    sys.exit(main())
