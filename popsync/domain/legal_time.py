"""Legal dates are Vietnamese calendar dates: an instant is read in Vietnam time.

Timestamps travel as UTC instants; a birth at 05:00 on 2 January in Hà Nội is
1 January 22:00 UTC, and comparing UTC dates would put it on the wrong day.
Vietnam has kept UTC+7 without daylight saving since 1975; earlier civil dates
are taken in the same offset.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")


def legal_date(instant: datetime) -> date:
    return instant.astimezone(VIETNAM_TIME).date()
