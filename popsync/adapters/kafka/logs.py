"""Where librdkafka's own log lines go: one Python logger, instead of the process's stderr.

Every confluent-kafka client popsync opens passes `logger=CLIENT_LOGGER` (the client then
hands its log lines to it when it is polled). The entry point decides how loud it is
(`popsync.cli`): a command that fails prints one line of its own, not librdkafka's retries.
"""

from __future__ import annotations

import logging

CLIENT_LOGGER = logging.getLogger("popsync.librdkafka")
