"""``python -m bench.matching``: run the matching benchmark, write bench/results/matching.json."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.matching import DEFAULT_CITIZENS, DEFAULT_RECORDS, DEFAULT_SEED, RESULTS, TUNING_SEED
from bench.matching.harness import run
from popsync.identity import MatchThresholds


def _parser() -> argparse.ArgumentParser:
    defaults = MatchThresholds()
    parser = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="%(default)s")
    parser.add_argument("--citizens", type=int, default=DEFAULT_CITIZENS, help="%(default)s")
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS, help="%(default)s")
    parser.add_argument(
        "--non-match-share", type=float, default=0.10, help="records of absent people, %(default)s"
    )
    parser.add_argument("--auto-link", type=float, default=defaults.auto_link, help="%(default)s")
    parser.add_argument("--review", type=float, default=defaults.review, help="%(default)s")
    parser.add_argument("--margin", type=float, default=defaults.margin, help="%(default)s")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="JSON file ('-': stdout), %(default)s"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    thresholds = MatchThresholds(auto_link=args.auto_link, review=args.review, margin=args.margin)
    result = run(
        seed=args.seed,
        citizens=args.citizens,
        records=args.records,
        thresholds=thresholds,
        non_match_share=args.non_match_share,
    )
    result = {
        **result,
        "command": " ".join(["python -m bench.matching", *argv]),
        "tuning_seed": TUNING_SEED,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    if str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    timing = result["timing"]
    assert isinstance(timing, dict)
    print(
        f"precision {result['precision']:.4f}  recall {result['recall']:.4f} "
        f"(auto {result['recall_auto']:.4f})  review band {result['review_band_size']} "
        f"({result['review_band_share']:.2%})  {timing['records_per_second']:.0f} records/s"
        f"  -> {args.output}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
