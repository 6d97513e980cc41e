"""The README stays true: every setting is in its configuration table, every command listed."""

from pathlib import Path

from archive.settings import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in README]
    assert not missing, f"add to the README's configuration table: {missing}"


def test_every_command_is_documented() -> None:
    for command in ("serve", "scp", "indexer", "query", "migrate", "verify"):
        assert f"dicom-archive {command}" in README
    assert "make run" in README and "make test" in README
