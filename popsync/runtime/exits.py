"""How a worker process ends: its exit codes, and stopping at once."""

from __future__ import annotations

import logging
import os

EXIT_DRAINED = 0  # every finished batch committed; nothing in flight
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a limit stopped the worker; fix, then restart
EXIT_UNFINISHED_BATCH = 75  # EX_TEMPFAIL: restart me, nothing was committed

log = logging.getLogger(__name__)


class StopWorker(Exception):
    """Raised by a step that must not go on (e.g. the dead-letter limit was hit).

    The worker exits at once with `exit_code`, without committing the batch, so
    after the fix the same batch is processed again: nothing is lost.
    """

    def __init__(self, reason: str, exit_code: int = EXIT_SOFTWARE) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


def exit_without_commit(exit_code: int) -> None:
    """Stop the process now, with the batch that is not durable left unacked.

    Nothing of it is committed, so it is re-delivered and re-applied idempotently;
    faust's orderly shutdown would wait for that batch's acks, which never come.
    """
    log.error("exiting without committing the current batch (exit code %d)", exit_code)
    exit_now(exit_code)


def exit_now(exit_code: int) -> None:
    logging.shutdown()
    os._exit(exit_code)
