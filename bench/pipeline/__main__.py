"""``popsync bench`` / ``python -m bench.pipeline``: floor, naive and popsync on one stream."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.pipeline import DEFAULT_EVENTS, DEFAULT_SEED, RESULTS_DIR
from bench.pipeline.run import Options, run
from bench.trust import harness as trust


def parser(prog: str = "popsync bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="stream size, %(default)s")
    p.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "pipeline.json",
        help="JSON result; the chart goes beside it (.png), %(default)s",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="%(default)s")
    p.add_argument(
        "--rates",
        default="2000,500",
        help="latency runs at these events/s, the first is the headline, %(default)s",
    )
    p.add_argument("--latency-seconds", type=float, default=60, help="%(default)s")
    p.add_argument(
        "--latency-repeats",
        type=int,
        default=5,
        help="latency runs at the headline rate, each on a fresh pipeline, %(default)s",
    )
    p.add_argument(
        "--instances",
        default="1,2",
        help="instances of each worker, one run per value, %(default)s",
    )
    p.add_argument(
        "--naive-events",
        type=int,
        default=None,
        help="run the naive baseline on the first N events only (default: all)",
    )
    p.add_argument(
        "--ceiling-events",
        type=int,
        default=200_000,
        help="measure faust's consumption alone (popsync's runtime, a step that does "
        "nothing) on this many events; 0 skips it, %(default)s",
    )
    p.add_argument("--timeout", type=float, default=7200, help="per phase, seconds")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".popsync/bench"),
        help="generated streams are kept here, %(default)s",
    )
    p.add_argument("--workdir", type=Path, default=None, help="broker/PostgreSQL data, logs")
    p.add_argument(
        "--trust-citizens",
        type=int,
        default=1500,
        help="citizens of the stream the signature check is timed on (bench.trust)",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "popsync bench") -> int:
    args = parser(prog).parse_args(argv)
    options = Options(
        events=args.events,
        seed=args.seed,
        rates=tuple(float(r) for r in args.rates.split(",")),
        latency_seconds=args.latency_seconds,
        latency_repeats=args.latency_repeats,
        instances=tuple(int(n) for n in args.instances.split(",")),
        naive_events=args.naive_events,
        ceiling_events=args.ceiling_events,
        timeout=args.timeout,
        cache_dir=args.cache_dir,
        workdir=args.workdir,
    )
    given = sys.argv[1:] if argv is None else list(argv)
    result = {"command": " ".join([prog, *given]), **run(options)}
    # What verifying every event's signature costs, unsigned against signed (bench.trust).
    result["trust"] = trust.run(args.trust_citizens, repeat=3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    chart = args.output.with_suffix(".png")
    from bench.pipeline.report import draw

    draw(result, chart)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "events_per_second",
                    "ratio_popsync_to_floor",
                    "ratio_popsync_to_naive",
                    "latency_ms",
                    "peak_rss_mb",
                    "targets",
                )
            },
            indent=2,
        )
    )
    print(trust.bench_line(result["trust"]))
    print(f"-> {args.output}, {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m bench.pipeline"))
