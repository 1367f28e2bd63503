"""``python -m bench.verify`` / ``popsync bench verify``: the verification service under load,
beside the floor (the same reads, no HTTP) and a minimal FastAPI baseline."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.verify import DEFAULT_CITIZENS, DEFAULT_SEED, RESULTS
from bench.verify.harness import Options, bench_lines, run

# --quick: a small store and short windows, to try the harness (figures not comparable).
QUICK = {
    "citizens": 20_000,
    "questions": 10_000,
    "duration": 3.0,
    "warmup": 1.0,
    "concurrency": "8,32",
    "batch_concurrency": "2",
    "workers": "1",
}


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("POPSYNC_"):
        raise argparse.ArgumentTypeError(
            "expected POPSYNC_…=VALUE, e.g. POPSYNC_SERVE__MAX_IN_FLIGHT=512"
        )
    return name, value


def parser(prog: str = "python -m bench.verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--citizens", type=int, default=DEFAULT_CITIZENS, help="%(default)s")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="%(default)s")
    p.add_argument(
        "--questions", type=int, default=100_000, help="distinct questions asked, %(default)s"
    )
    p.add_argument("--duration", type=float, default=12.0, help="seconds per point, %(default)s")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before each, %(default)s")
    p.add_argument(
        "--concurrency", default="8,32,64", help="connections, single verifications, %(default)s"
    )
    p.add_argument(
        "--batch-concurrency", default="2,4", help="connections, batches of 1,000, %(default)s"
    )
    p.add_argument(
        "--workers", default="1,2", help="uvicorn workers of the baseline, a run each, %(default)s"
    )
    p.add_argument("--floor-connections", type=int, default=8, help="PK reads, %(default)s")
    p.add_argument(
        "--floor-batch-connections", type=int, default=4, help="= ANY reads, %(default)s"
    )
    p.add_argument("--no-service", action="store_true", help="skip popsync serve")
    p.add_argument(
        "--no-profile",
        action="store_true",
        help="do not sample the servers with py-spy (done when py-spy is installed)",
    )
    p.add_argument(
        "--service-env",
        type=_pair,
        action="append",
        default=[],
        metavar="POPSYNC_…=VALUE",
        help="a setting of popsync serve for this run (repeatable)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep PostgreSQL's data (the seeded store is reused), questions and logs here; "
        "default: a temporary directory, removed",
    )
    p.add_argument("--quick", action="store_true", help="a small, short run: " + str(QUICK))
    p.add_argument("--output", default=str(RESULTS), help="JSON file ('-': stdout), %(default)s")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench.verify") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser(prog)
    if "--quick" in argv:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    options = Options(
        citizens=args.citizens,
        seed=args.seed,
        questions=args.questions,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=_counts(args.concurrency),
        batch_concurrency=_counts(args.batch_concurrency),
        workers=_counts(args.workers),
        floor_connections=args.floor_connections,
        floor_batch_connections=args.floor_batch_connections,
        service=not args.no_service,
        profile=not args.no_profile,
        service_env=dict(args.service_env),
        workdir=args.workdir,
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


if __name__ == "__main__":
    sys.exit(main())
