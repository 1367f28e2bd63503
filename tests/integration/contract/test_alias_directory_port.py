"""`popsync.domain.aliases.AliasDirectory`: resolve answers only known aliases; register
answers each alias's PIN as stored, and an alias's first registration wins. Run against
`tests.fakes.InMemoryAliasDirectory` and `popsync.adapters.postgres.pins.PostgresAliasDirectory`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from popsync.domain.aliases import Alias

if TYPE_CHECKING:
    from popsync.domain.aliases import AliasDirectory

pytestmark = pytest.mark.integration

AN = "079203000123"
BINH = "001185000102"
CMND = "012345678"
OLD_PIN = "079203000999"


def test_nothing_resolves_at_first(alias_directory: AliasDirectory) -> None:
    async def scenario() -> None:
        assert await alias_directory.resolve([]) == {}
        assert await alias_directory.resolve([CMND, AN]) == {}
        assert await alias_directory.register([]) == {}

    asyncio.run(scenario())


def test_registered_aliases_resolve_and_unknown_ones_do_not(
    alias_directory: AliasDirectory,
) -> None:
    aliases = [Alias(CMND, AN, "CMND", "ev-1"), Alias(OLD_PIN, AN, "PREVIOUS_PIN", "ev-2")]

    async def scenario() -> None:
        assert await alias_directory.register(aliases) == {CMND: AN, OLD_PIN: AN}
        assert await alias_directory.resolve([CMND, "987654321", OLD_PIN, AN, CMND]) == {
            CMND: AN,
            OLD_PIN: AN,
        }

    asyncio.run(scenario())


def test_the_first_registration_of_an_alias_wins(alias_directory: AliasDirectory) -> None:
    async def scenario() -> None:
        assert await alias_directory.register([Alias(CMND, AN, "CMND", "ev-1")]) == {CMND: AN}
        taken = [Alias(CMND, BINH, "CMND", "ev-2"), Alias(OLD_PIN, BINH, "PREVIOUS_PIN", "ev-2")]
        assert await alias_directory.register(taken) == {CMND: AN, OLD_PIN: BINH}
        assert await alias_directory.resolve([CMND, OLD_PIN]) == {CMND: AN, OLD_PIN: BINH}

    asyncio.run(scenario())


def test_within_one_batch_the_first_registration_wins(alias_directory: AliasDirectory) -> None:
    batch = [Alias(CMND, AN, "CMND", "ev-1"), Alias(CMND, BINH, "CMND", "ev-2")]

    async def scenario() -> None:
        assert await alias_directory.register(batch) == {CMND: AN}
        assert await alias_directory.resolve([CMND]) == {CMND: AN}

    asyncio.run(scenario())


def test_register_answers_for_its_own_aliases_only(alias_directory: AliasDirectory) -> None:
    async def scenario() -> None:
        await alias_directory.register([Alias(CMND, AN, "CMND", "ev-1")])
        again = [Alias(OLD_PIN, BINH, "PREVIOUS_PIN", "ev-2")]
        assert await alias_directory.register(again) == {OLD_PIN: BINH}

    asyncio.run(scenario())
