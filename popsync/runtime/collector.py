"""How popsync's long-running processes (workers, the verification service) tune Python's
cyclic garbage collector."""

from __future__ import annotations

import gc


def tune_garbage_collector(first_threshold: int) -> None:
    """Run the cyclic garbage collector far less often, and never over what start-up built.

    A worker allocates hundreds of short-lived objects per event, the verification service
    thousands per request, which reference counting frees; almost none are in cycles, so
    Python's default (a collection every 700 allocations) mostly rescans the states a
    process keeps. A collection walks the young
    objects still alive, about a batch's worth whatever the threshold, so a rarer one costs
    little more (bench/README.md has the measurements).
    """
    gc.collect()
    gc.freeze()  # modules, schemas, settings: alive for the whole run
    if first_threshold == 0:
        gc.disable()
        return
    gc.set_threshold(first_threshold, *gc.get_threshold()[1:])
