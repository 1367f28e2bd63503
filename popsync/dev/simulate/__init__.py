"""A seeded, realistic stream of registry events: coherent lives plus the noise real
registries send (legacy codes, re-sends, late arrivals, invalid events with known reasons)."""

from popsync.dev.simulate.generator import (
    INVALID_REASONS,
    SimulatedMessage,
    StreamStats,
    simulate,
    stats,
    write_jsonl,
)

__all__ = [
    "INVALID_REASONS",
    "SimulatedMessage",
    "StreamStats",
    "simulate",
    "stats",
    "write_jsonl",
]
