"""The packaged name-token table: what the generator writes, read back unchanged."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from popsync.dev import token_weights
from popsync.identity.folding import WEIGHTS_FILE, TokenTable, default_token_weights


@pytest.fixture(scope="module")
def generated() -> TokenTable:
    return token_weights.generate()


def packaged_text() -> str:
    return resources.files("popsync.identity").joinpath(WEIGHTS_FILE).read_text(encoding="utf-8")


def test_the_packaged_file_is_what_the_generator_writes(generated: TokenTable) -> None:
    assert packaged_text() == generated.to_text(), "run `python -m popsync.dev.token_weights`"


def test_the_default_weights_are_the_generated_ones(generated: TokenTable) -> None:
    loaded, expected = default_token_weights(), generated.weights()
    assert loaded.probabilities == expected.probabilities
    assert loaded.unknown_probability == expected.unknown_probability
    assert loaded.max_weight == expected.max_weight
    assert default_token_weights() is loaded  # read once per process


def test_the_header_records_how_the_table_was_made() -> None:
    table = TokenTable.from_text(packaged_text())
    assert table.sample == token_weights.SAMPLE
    assert table.provenance["seed"] == str(token_weights.SEED)
    assert table.provenance["generator"] == "python -m popsync.dev.token_weights"
    assert {"source", "birth_years", "vocabulary_draws"} <= table.provenance.keys()


def test_a_small_table_survives_the_round_trip() -> None:
    table = token_weights.generate(sample=300, seed=7, vocabulary_draws=5)
    assert 0 in table.counts.values()  # tokens never drawn are kept, as known names
    again = TokenTable.from_text(table.to_text())
    assert again == table
    assert again.weights().probabilities == table.weights().probabilities


@pytest.fixture
def patched_generator(monkeypatch: pytest.MonkeyPatch, generated: TokenTable) -> None:
    monkeypatch.setattr(token_weights, "generate", lambda: generated)


@pytest.mark.usefixtures("patched_generator")
def test_check_fails_in_one_line_when_the_file_is_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / WEIGHTS_FILE
    assert token_weights.main(["--check", "--output", str(path)]) == 1  # missing
    assert token_weights.main(["--output", str(path)]) == 0
    assert token_weights.main(["--check", "--output", str(path)]) == 0
    capsys.readouterr()
    path.write_text(path.read_text(encoding="utf-8").replace("\t1056\n", "\t1057\n"))
    assert token_weights.main(["--check", "--output", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "differs" in err and "python -m popsync.dev.token_weights" in err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("# format: 1", "# format: 2"), "format 2"),
        (lambda t: t.replace("# sample: 20000\n", ""), "lacks ['sample']"),
        (lambda t: t.replace("token\tnames\n", ""), "line"),
        (lambda t: t + "nguyen\t3\n", "new token"),
        (lambda t: t + "oops\n", "new token"),
    ],
)
def test_a_malformed_file_is_refused(edit: Callable[[str], str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenTable.from_text(edit(packaged_text()))
