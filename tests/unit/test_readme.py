"""The README stays true: its configuration table is the declared settings, every command listed."""

import re
from pathlib import Path

from archive.settings import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _configuration_table() -> list[tuple[str, str]]:
    """(variable, default) of each row of the README's configuration table, in order."""
    rows = []
    for line in README.splitlines():
        if match := re.match(r"\| `(ARCHIVE_[A-Z0-9_]+)` \|([^|]*)\|", line):
            default = match.group(2).strip().strip("`")
            rows.append((match.group(1), "" if default == "unset" else default))
    return rows


def test_the_configuration_table_is_the_declared_settings_with_their_defaults() -> None:
    declared = [(s.env, s.default_text) for s in SETTINGS]
    table = _configuration_table()
    assert [env for env, _ in table] == [env for env, _ in declared], (
        "the README's configuration table must list archive.settings.Settings' fields, in order")
    wrong = [(env, documented, default) for (env, documented), (_, default) in zip(table, declared)
             if documented != default]
    assert not wrong, f"README default differs from the declaration (variable, README, declared): {wrong}"


def test_every_command_is_documented() -> None:
    for command in ("serve", "scp", "indexer", "query", "migrate", "verify"):
        assert f"dicom-archive {command}" in README
    assert "make run" in README and "make test" in README
