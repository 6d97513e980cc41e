from pathlib import Path

import pytest

from archive.core.errors import ConfigError
from archive.settings import DuplicatePolicy, Settings


def test_defaults_are_embedded(tmp_path: Path) -> None:
    s = Settings.from_env({"ARCHIVE_DATA_DIR": str(tmp_path)})
    assert s.object_store == f"file://{tmp_path}/objects"
    assert s.queue == f"sqlite://{tmp_path}/queue.db"
    assert s.catalog.startswith("sqlite://") and s.search.startswith("sqlite://")
    assert (s.aet, s.dicom_port, s.http_port) == ("ARCHIVE", 11112, 8080)
    assert s.duplicate_policy is DuplicatePolicy.KEEP_FIRST


def test_distributed_urls_and_lists() -> None:
    s = Settings.from_env({
        "ARCHIVE_OBJECT_STORE": "s3://127.0.0.1:8333/archive",
        "ARCHIVE_S3_ACCESS_KEY": "a",
        "ARCHIVE_S3_SECRET_KEY": "b",
        "ARCHIVE_QUEUE": "amqp://u:p@127.0.0.1:5672/v",
        "ARCHIVE_CATALOG": "postgresql://u:p@127.0.0.1:5432/db",
        "ARCHIVE_SEARCH": "http://127.0.0.1:9200",
        "ARCHIVE_ALLOWED_AETS": "CT1, MR2",
        "ARCHIVE_ALLOWED_NETWORKS": "10.0.0.0/8,127.0.0.1/32",
    })
    assert s.allowed_aets == ("CT1", "MR2")
    assert len(s.allowed_networks) == 2
    assert "secret" not in repr(s) and "'b'" not in repr(s)


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"ARCHIVE_QUEUE": "redis://x"}, "ARCHIVE_QUEUE"),
        ({"ARCHIVE_DICOM_PORT": "eleven"}, "ARCHIVE_DICOM_PORT"),
        ({"ARCHIVE_DICOM_PORT": "70000"}, "ARCHIVE_DICOM_PORT"),
        ({"ARCHIVE_OBJECT_STORE": "s3://host:1/bucket"}, "ARCHIVE_S3_ACCESS_KEY"),
        ({"ARCHIVE_OBJECT_STORE": "s3://host:1"}, "bucket"),
        ({"ARCHIVE_ALLOWED_NETWORKS": "10.0.0.0/33"}, "ARCHIVE_ALLOWED_NETWORKS"),
        ({"ARCHIVE_DUPLICATE_POLICY": "overwrite"}, "ARCHIVE_DUPLICATE_POLICY"),
        ({"ARCHIVE_AET": "A" * 17}, "ARCHIVE_AET"),
        ({"ARCHIVE_FSYNC": "maybe"}, "ARCHIVE_FSYNC"),
        ({"ARCHIVE_WORKERS": "0"}, "ARCHIVE_WORKERS"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_cli_overrides_win(tmp_path: Path) -> None:
    s = Settings.from_env({"ARCHIVE_DICOM_PORT": "104"}, dicom_port=4242, data_dir=tmp_path)
    assert s.dicom_port == 4242 and s.data_dir == tmp_path
