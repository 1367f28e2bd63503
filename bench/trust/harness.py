"""The validator's signature check, per event, in CPU time (`python -m bench.trust`, and
part of `popsync bench`).

What runs: a simulated stream (every kind of event, about 1% invalid), each event encoded
and signed as its registry signs it (the development publishers' keys). In one process, no
broker, no database:
- **verify**: `Verifier.verify` on every signed event (canonical bytes, SHA-256 of the value,
  Ed25519 through PyNaCl, the directory's checks), CPU time per event;
- **validator core, unsigned vs signed**: the validator's per-event work without its
  database ports — decode, then the rules (`ValidatorStep.route`) — alone, and with the
  signature check before it, as the validator runs it: events per CPU second of each, and
  how much the check costs of that throughput.
The end-to-end pipeline (`popsync bench`) runs the same signed stream through the real
workers; this isolates what verification adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from popsync.contract import models as m
from popsync.contract.codec import Codec, DecodeError
from popsync.dev.publishers import DevDirectory, dev_signers
from popsync.dev.simulate.generator import simulate
from popsync.runtime.messages import InboundMessage
from popsync.settings import Settings
from popsync.trust.verification import TrustViolation, Verifier
from services.validator.step import ValidatorStep

RESULTS = Path("bench/results/trust.json")
EVENTS = Codec(m.RegistryEvent)
GOAL_MICROSECONDS = 50.0
GOAL_THROUGHPUT_LOSS = 0.15


def signed_stream(citizens: int) -> list[tuple[InboundMessage, m.RegistryEvent]]:
    signers = dev_signers()
    stream = []
    for offset, message in enumerate(simulate(citizens, seed=2025, now=datetime.now(UTC))):
        value = EVENTS.encode(message.event)
        headers = tuple(signers.headers(message.key, value, message.event))
        inbound = InboundMessage("bench", 0, offset, message.key, value, headers)
        stream.append((inbound, message.event))
    return stream


def cpu_seconds(work: Callable[[], None], repeat: int) -> float:
    """The least CPU time of `repeat` runs of `work` (the others were disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def run(citizens: int, repeat: int) -> dict[str, Any]:
    stream = signed_stream(citizens)
    verifier = Verifier(DevDirectory(), refresh_seconds=3600)
    asyncio.run(verifier.refresh())
    now = datetime.now(UTC)
    # The validator without its database ports: `route` (decode, rules) uses none of them.
    step = ValidatorStep(
        Settings(), cast(Any, None), cast(Any, None), cast(Any, None), verifier=verifier
    )

    def verify_all() -> None:
        for message, event in stream:
            with contextlib.suppress(TrustViolation):
                verifier.verify(message, event, now)

    def unsigned_path() -> None:
        for message, _ in stream:
            step.route(message, now, {}, _decoded(message))

    def signed_path() -> None:
        for message, _ in stream:
            decoded = _decoded(message)
            if isinstance(decoded, m.RegistryEvent):
                try:
                    verifier.verify(message, decoded, now)
                except TrustViolation:
                    continue
            step.route(message, now, {}, decoded)

    verify = cpu_seconds(verify_all, repeat)
    unsigned = cpu_seconds(unsigned_path, repeat)
    signed = cpu_seconds(signed_path, repeat)
    events = len(stream)
    per_event = verify / events * 1e6
    loss = 1 - unsigned / signed
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "events": events,
        "repeat": repeat,
        "verify_cpu_us_per_event": round(per_event, 1),
        "goal_us_per_event": GOAL_MICROSECONDS,
        "validator_core_unsigned_events_per_cpu_s": round(events / unsigned),
        "validator_core_signed_events_per_cpu_s": round(events / signed),
        "throughput_loss": round(loss, 3),
        "goal_throughput_loss": GOAL_THROUGHPUT_LOSS,
    }


def _decoded(message: InboundMessage) -> m.RegistryEvent | DecodeError:
    try:
        event: m.RegistryEvent = EVENTS.decode(message.value)
    except DecodeError as exc:
        return exc
    return event


def bench_line(result: dict[str, Any]) -> str:
    return (
        f"trust: verifying a signature costs {result['verify_cpu_us_per_event']} µs of CPU per "
        f"event (goal ≤ {GOAL_MICROSECONDS:g}); the validator's core path does "
        f"{result['validator_core_signed_events_per_cpu_s']:,} events per CPU second signed "
        f"against {result['validator_core_unsigned_events_per_cpu_s']:,} unsigned "
        f"({result['throughput_loss']:.0%} less; goal ≤ {GOAL_THROUGHPUT_LOSS:.0%}); "
        f"{result['events']:,} events"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trust", description=__doc__)
    parser.add_argument("--citizens", type=int, default=3000, help="%(default)s")
    parser.add_argument("--repeat", type=int, default=3, help="%(default)s")
    parser.add_argument("--output", type=Path, default=RESULTS, help="'-': stdout")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    result = run(args.citizens, args.repeat)
    text = json.dumps(result, indent=2) + "\n"
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    print(bench_line(result))
    return 0
