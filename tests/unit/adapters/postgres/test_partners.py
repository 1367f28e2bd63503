"""The read path's SQL side that needs no server: audit rows in COPY's text format."""

from __future__ import annotations

import datetime

from popsync.adapters.postgres.partners import AUDIT_COLUMNS, AuditRow, audit_lines

AT = datetime.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=datetime.UTC)


def row(**changes: object) -> AuditRow:
    values: dict[str, object] = {
        "at": AT,
        "request_id": "0a1b2c3d4e5f6071",
        "item": 3,
        "partner_id": "bank-demo",
        "purpose": "KYC",
        "endpoint": "verify_batch",
        "pin_hash": bytes(range(32)),
        "result": "match",
        "status": 200,
        "latency_ms": 1.25,
    }
    values.update(changes)
    return AuditRow(**values)  # type: ignore[arg-type]


def test_a_row_is_one_line_of_tab_separated_columns_in_order() -> None:
    line = audit_lines([row()])
    assert line.endswith("\n") and line.count("\n") == 1
    fields = line.rstrip("\n").split("\t")
    assert len(fields) == len(AUDIT_COLUMNS)
    assert fields[0] == "2026-12-07T01:02:03.456789+00:00"
    assert fields[1:6] == ["0a1b2c3d4e5f6071", "3", "bank-demo", "KYC", "verify_batch"]
    assert fields[6] == "\\\\x" + bytes(range(32)).hex()  # bytea's hex form, its \\ escaped
    assert fields[7:] == ["match", "200", "1.25"]


def test_missing_values_are_null_and_text_is_escaped() -> None:
    line = audit_lines([row(partner_id=None, purpose="A\tB\\C\nD\rE", pin_hash=None)])
    fields = line.rstrip("\n").split("\t")
    assert fields[3] == "\\N"
    assert fields[4] == "A\\tB\\\\C\\nD\\rE"
    assert fields[6] == "\\N"


def test_rows_of_one_request_and_of_several_are_each_their_own_line() -> None:
    first = [
        row(item=n, pin_hash=bytes([n]) * 32, result=("match", "no_match")[n % 2]) for n in range(4)
    ]
    other = [row(request_id="ffff", item=0, partner_id="other", status=429, result="rate_limited")]
    together = audit_lines([*first, *other, *first[:1]])
    alone = "".join(audit_lines([r]) for r in [*first, *other, *first[:1]])
    assert together == alone
    assert together.count("\n") == 6
