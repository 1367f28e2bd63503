"""Options shared by the whole test suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-citizens",
        type=int,
        default=1500,
        help="citizens simulated by the crash test (1,500 ≈ 8,000 events; 9,200 ≈ 50,000)",
    )
    parser.addoption(
        "--crash-kills",
        type=int,
        default=2,
        help="how many times the crash test kills each kind of worker",
    )
    parser.addoption(
        "--keep-server-data",
        action="store_true",
        help="keep the data of the integration tests' broker and PostgreSQL (only their logs "
        "are kept otherwise)",
    )
