"""``python -m bench.refold``: one citizen's events in reverse order, through the synchronizer."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.refold import DEFAULT_EVENTS, RESULTS
from bench.refold.harness import Options, bench_line, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.refold", description=__doc__)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="%(default)s")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the settings' batch_size"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="PostgreSQL data and log")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="JSON file ('-': stdout), %(default)s"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    result = run(Options(args.events, args.batch_size, args.workdir))
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    print(bench_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
