import dataclasses
from pathlib import Path

import pytest

from archive.core.errors import ConfigError
from archive.runtime import _child_env
from archive.settings import SETTINGS, DuplicatePolicy, Peer, Settings


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


# --- each setting declared once: every use follows from the declaration ----------------------

# A value other than the default for every setting, as its variable's text.
NON_DEFAULT = {
    "ARCHIVE_DATA_DIR": "/srv/archive",
    "ARCHIVE_OBJECT_STORE": "s3://127.0.0.1:8333/bucket?secure=true",
    "ARCHIVE_S3_ACCESS_KEY": "access",
    "ARCHIVE_S3_SECRET_KEY": "s3cr3t-value",
    "ARCHIVE_QUEUE": "amqp://u:p@127.0.0.1:5672/v",
    "ARCHIVE_CATALOG": "postgresql://u:p@127.0.0.1:5432/db",
    "ARCHIVE_SEARCH": "https://127.0.0.1:9200",
    "ARCHIVE_SEARCH_INDEX": "other-index",
    "ARCHIVE_QUEUE_NAME": "other.queue",
    "ARCHIVE_AET": "HOSPITAL_VNA",
    "ARCHIVE_BIND": "127.0.0.1",
    "ARCHIVE_DICOM_PORT": "104",
    "ARCHIVE_HTTP_PORT": "0",
    "ARCHIVE_PUBLIC_URL": "https://archive.example.com/base",
    "ARCHIVE_OBJECT_CACHE_BYTES": "0",
    "ARCHIVE_CORS_ORIGINS": "https://a.example/,https://b.example",
    "ARCHIVE_OIDC_ISSUER": "https://sso.example.com/realms/archive",
    "ARCHIVE_OIDC_AUDIENCE": "dicom-archive",
    "ARCHIVE_OIDC_ROLES_CLAIM": "roles",
    "ARCHIVE_HTTP_INSECURE_OPEN": "true",
    "ARCHIVE_METRICS_PORT": "9102",
    "ARCHIVE_HTTP_TLS_CERT": "/etc/archive/tls.crt",
    "ARCHIVE_HTTP_TLS_KEY": "/etc/archive/tls.key",
    "ARCHIVE_UI_OIDC_CLIENT_ID": "archive-ui",
    "ARCHIVE_UI_VIEWER_URL": "https://ohif.example.com/viewer?StudyInstanceUIDs={StudyInstanceUID}",
    "ARCHIVE_UI_IDLE_MINUTES": "0.05",
    "ARCHIVE_QUERY_DICOM_PORT": "4243",
    "ARCHIVE_PEERS": "STORESCU@127.0.0.1:4242, V6@[::1]:104",
    "ARCHIVE_FIND_MAX_MATCHES": "7",
    "ARCHIVE_ALLOWED_AETS": "CT1, MR2",
    "ARCHIVE_ALLOWED_NETWORKS": "10.1.2.3/8,::1/128",
    "ARCHIVE_DICOM_TLS_PORT": "11114",
    "ARCHIVE_QUERY_DICOM_TLS_PORT": "11115",
    "ARCHIVE_DICOM_PLAIN": "false",
    "ARCHIVE_TLS_CERT": "/etc/archive/tls.crt",
    "ARCHIVE_TLS_KEY": "/etc/archive/tls.key",
    "ARCHIVE_TLS_CLIENT_CA": "/etc/archive/clients-ca.pem",
    "ARCHIVE_AE_CONFIG": "/etc/archive/aes.yaml",
    "ARCHIVE_SCP_ENGINE": "pynetdicom",
    "ARCHIVE_EVENT_LOOP": "asyncio",
    "ARCHIVE_MAX_ASSOCIATIONS": "3",
    "ARCHIVE_MAX_PDU": "0",
    "ARCHIVE_NETWORK_TIMEOUT": "0.1",
    "ARCHIVE_ACSE_TIMEOUT": "2.5",
    "ARCHIVE_DIMSE_TIMEOUT": "1e-3",
    "ARCHIVE_STORE_TIMEOUT": "90.5",
    "ARCHIVE_QUERY_TIMEOUT": "7",
    "ARCHIVE_DUPLICATE_POLICY": "reject",
    "ARCHIVE_FSYNC": "No",
    "ARCHIVE_DELIVERY_LIMIT": "8",
    "ARCHIVE_INDEXER_BATCH": "500",
    "ARCHIVE_INDEXER_LINGER": "0.25",
    "ARCHIVE_INDEXER_PREFETCH": "1000",
    "ARCHIVE_STUDY_STABLE_SECONDS": "30",
    "ARCHIVE_ROUTING_RULES": "/etc/archive/rules.yaml",
    "ARCHIVE_FORWARD_ATTEMPTS": "3",
    "ARCHIVE_FORWARD_BATCH": "20",
    "ARCHIVE_WEBHOOKS": "https://hooks.example/archive,http://127.0.0.1:9000/x",
    "ARCHIVE_WEBHOOK_SECRET": "s3cret",
    "ARCHIVE_WEBHOOK_EVENTS": "study.stable,forward.failed",
    "ARCHIVE_WORKERS": "4",
    "ARCHIVE_QUERY_LIMIT": "10",
    "ARCHIVE_STOW_MAX_BYTES": "1",
    "ARCHIVE_LOG_LEVEL": "debug",
    "ARCHIVE_LOG_FORMAT": "text",
    "ARCHIVE_AUDIT_SYSLOG": "tls://audit.example:6514",
    "ARCHIVE_AUDIT_FILE": "/var/log/archive/audit.log",
    "ARCHIVE_AUDIT_FILE_MAX_BYTES": "1048576",
    "ARCHIVE_AUDIT_FILE_KEEP": "3",
    "ARCHIVE_AUDIT_TLS_CA": "/etc/archive/audit-ca.pem",
    "ARCHIVE_AUDIT_TLS_CERT": "/etc/archive/audit-client.pem",
    "ARCHIVE_AUDIT_TLS_KEY": "/etc/archive/audit-client.key",
    "ARCHIVE_AUDIT_SOURCE_ID": "VNA-1",
    "ARCHIVE_AUDIT_BUFFER": "100",
}


def test_every_setting_has_a_non_default_example() -> None:
    assert list(NON_DEFAULT) == [s.env for s in SETTINGS]
    settings = Settings.from_env(NON_DEFAULT)
    defaults = Settings()
    same = [s.env for s in SETTINGS if getattr(settings, s.name) == getattr(defaults, s.name)]
    assert not same, f"these examples are the default: {same}"


def test_every_setting_round_trips_through_the_child_environment() -> None:
    settings = Settings.from_env(NON_DEFAULT)
    child = Settings.from_env(_child_env(settings))
    assert child == settings
    for s in SETTINGS:
        assert getattr(child, s.name) == getattr(settings, s.name), s.env
    # Parsed values, not text: the lists and the enum kept their types
    assert settings.peers == (Peer("STORESCU", "127.0.0.1", 4242), Peer("V6", "::1", 104))
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.duplicate_policy is DuplicatePolicy.REJECT and settings.fsync is False


@pytest.mark.parametrize("settings", [
    Settings(),
    Settings(cors_origins=()),  # an empty list that is not the default
    Settings(allowed_aets=("CT1",), acse_timeout=2, store_timeout=float("inf")),
], ids=["defaults", "no-origins", "python-values"])
def test_settings_from_python_round_trip_too(settings: Settings) -> None:
    assert Settings.from_env(settings.to_env()) == settings


def test_children_get_the_parents_settings_not_its_environment(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("ARCHIVE_DICOM_PORT", "104")  # a CLI flag (below) overrode it in the parent
    monkeypatch.setenv("ARCHIVE_WORKERS", "3")
    monkeypatch.setenv("UNRELATED", "kept")
    settings = Settings.from_env(dicom_port=4242, data_dir=tmp_path, aet="FLAGGED")
    env = _child_env(settings)
    assert env["UNRELATED"] == "kept"
    assert Settings.from_env(env) == settings
    assert (env["ARCHIVE_DICOM_PORT"], env["ARCHIVE_AET"], env["ARCHIVE_WORKERS"]) == ("4242", "FLAGGED", "3")


def test_secrets_go_to_children_but_not_into_repr() -> None:
    settings = Settings.from_env(NON_DEFAULT)
    assert settings.to_env()["ARCHIVE_S3_SECRET_KEY"] == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings) and "s3_secret_key" not in repr(settings)


# One invalid text per setting that has invalid texts; the others take any text.
INVALID = {
    "ARCHIVE_OBJECT_STORE": "ftp://host/objects",
    "ARCHIVE_QUEUE": "redis://x",
    "ARCHIVE_CATALOG": "mysql://x",
    "ARCHIVE_SEARCH": "solr://x",
    "ARCHIVE_AET": "BACK\\SLASH",
    "ARCHIVE_DICOM_PORT": "eleven",
    "ARCHIVE_HTTP_PORT": "65536",
    "ARCHIVE_PUBLIC_URL": "https://",
    "ARCHIVE_OBJECT_CACHE_BYTES": "-1",
    "ARCHIVE_OIDC_ISSUER": "http://sso.example.com/realms/archive",  # http:// off loopback
    "ARCHIVE_OIDC_ROLES_CLAIM": "realm_access..roles",
    "ARCHIVE_HTTP_INSECURE_OPEN": "maybe",
    "ARCHIVE_METRICS_PORT": "0",
    "ARCHIVE_HTTP_TLS_CERT": "/etc/archive/tls.crt",  # without its key
    "ARCHIVE_HTTP_TLS_KEY": "/etc/archive/tls.key",  # without its certificate
    "ARCHIVE_UI_VIEWER_URL": "javascript:alert(1)",
    "ARCHIVE_UI_IDLE_MINUTES": "0",
    "ARCHIVE_QUERY_DICOM_PORT": "-1",
    "ARCHIVE_PEERS": "STORESCU@127.0.0.1",
    "ARCHIVE_FIND_MAX_MATCHES": "0",
    "ARCHIVE_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-network",
    "ARCHIVE_DICOM_TLS_PORT": "-1",
    "ARCHIVE_QUERY_DICOM_TLS_PORT": "99999",
    "ARCHIVE_DICOM_PLAIN": "off",
    "ARCHIVE_SCP_ENGINE": "fast",
    "ARCHIVE_EVENT_LOOP": "libev",
    "ARCHIVE_MAX_ASSOCIATIONS": "1.5",
    "ARCHIVE_MAX_PDU": "-1",
    "ARCHIVE_NETWORK_TIMEOUT": "a minute",
    "ARCHIVE_ACSE_TIMEOUT": "30s",
    "ARCHIVE_DIMSE_TIMEOUT": "sixty",
    "ARCHIVE_STORE_TIMEOUT": "2m",
    "ARCHIVE_QUERY_TIMEOUT": "none",
    "ARCHIVE_DUPLICATE_POLICY": "overwrite",
    "ARCHIVE_FSYNC": "on",
    "ARCHIVE_DELIVERY_LIMIT": "0",
    "ARCHIVE_INDEXER_BATCH": "0",
    "ARCHIVE_INDEXER_LINGER": "-0.1",
    "ARCHIVE_INDEXER_PREFETCH": "-5",
    "ARCHIVE_STUDY_STABLE_SECONDS": "soon",
    "ARCHIVE_FORWARD_ATTEMPTS": "0",
    "ARCHIVE_FORWARD_BATCH": "many",
    "ARCHIVE_WEBHOOKS": "ftp://x.example/",
    "ARCHIVE_WEBHOOK_EVENTS": "study.created",
    "ARCHIVE_WORKERS": "0",
    "ARCHIVE_QUERY_LIMIT": "0",
    "ARCHIVE_STOW_MAX_BYTES": "4G",
    "ARCHIVE_LOG_LEVEL": "LOUD",
    "ARCHIVE_LOG_FORMAT": "xml",
    "ARCHIVE_AUDIT_SYSLOG": "syslog://host:514",
    "ARCHIVE_AUDIT_FILE_MAX_BYTES": "10",
    "ARCHIVE_AUDIT_FILE_KEEP": "0",
    "ARCHIVE_AUDIT_BUFFER": "0",
}
ANY_TEXT = {"ARCHIVE_DATA_DIR", "ARCHIVE_S3_ACCESS_KEY", "ARCHIVE_S3_SECRET_KEY", "ARCHIVE_SEARCH_INDEX",
            "ARCHIVE_QUEUE_NAME", "ARCHIVE_BIND", "ARCHIVE_CORS_ORIGINS", "ARCHIVE_ALLOWED_AETS",
            "ARCHIVE_TLS_CERT", "ARCHIVE_TLS_KEY", "ARCHIVE_TLS_CLIENT_CA", "ARCHIVE_AE_CONFIG",
            "ARCHIVE_AUDIT_FILE", "ARCHIVE_AUDIT_TLS_CA", "ARCHIVE_AUDIT_TLS_CERT", "ARCHIVE_AUDIT_TLS_KEY",
            "ARCHIVE_AUDIT_SOURCE_ID",
            "ARCHIVE_OIDC_AUDIENCE", "ARCHIVE_UI_OIDC_CLIENT_ID", "ARCHIVE_ROUTING_RULES", "ARCHIVE_WEBHOOK_SECRET"}


@pytest.mark.parametrize("env, fragment", [
    ({"ARCHIVE_TLS_CERT": "c.pem"}, "ARCHIVE_TLS_CERT and ARCHIVE_TLS_KEY go together"),
    ({"ARCHIVE_TLS_KEY": "k.pem"}, "ARCHIVE_TLS_CERT and ARCHIVE_TLS_KEY go together"),
    ({"ARCHIVE_TLS_CLIENT_CA": "ca.pem"}, "ARCHIVE_TLS_CLIENT_CA needs the DICOM TLS port"),
    ({"ARCHIVE_DICOM_PLAIN": "false"}, "ARCHIVE_DICOM_PLAIN=false leaves no DICOM port"),
])
def test_the_tls_settings_go_together(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)
    assert Settings.from_env({"ARCHIVE_TLS_CERT": "c.pem", "ARCHIVE_TLS_KEY": "k.pem"}).dicom_tls
    assert not Settings().dicom_tls


def test_every_setting_is_either_checked_or_free_text() -> None:
    assert set(INVALID) | ANY_TEXT == {s.env for s in SETTINGS} and not set(INVALID) & ANY_TEXT


@pytest.mark.parametrize("variable", INVALID)
def test_an_invalid_value_names_its_variable(variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: ") as caught:
        Settings.from_env({variable: INVALID[variable]})
    assert "Traceback" not in str(caught.value) and len(str(caught.value)) > len(variable) + 10


@pytest.mark.parametrize("changes, variable", [
    ({"dicom_port": 70000}, "ARCHIVE_DICOM_PORT"),
    ({"workers": 0}, "ARCHIVE_WORKERS"),
    ({"scp_engine": "fast"}, "ARCHIVE_SCP_ENGINE"),
    ({"queue": "redis://x"}, "ARCHIVE_QUEUE"),
    ({"aet": ""}, "ARCHIVE_AET"),
])
def test_python_values_are_checked_by_the_same_declaration(changes: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        Settings(**changes)
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        dataclasses.replace(Settings(), **changes)  # type: ignore[arg-type]


def test_blank_means_default_and_text_is_trimmed() -> None:
    s = Settings.from_env({"ARCHIVE_DICOM_PORT": "  ", "ARCHIVE_AET": " MINE ", "ARCHIVE_PEERS": " , "})
    assert (s.dicom_port, s.aet, s.peers) == (11112, "MINE", ())


def test_query_timeout_is_its_own_setting() -> None:
    s = Settings.from_env({"ARCHIVE_STORE_TIMEOUT": "30"})
    assert (s.store_timeout, s.query_timeout) == (30.0, 120.0)
    assert Settings.from_env({"ARCHIVE_QUERY_TIMEOUT": "5"}).query_timeout == 5.0


def test_help_lists_every_setting_with_its_default() -> None:
    from archive.cli import _epilog

    epilog = _epilog(80)
    for s in SETTINGS:
        assert (f"  {s.env}={s.default_text}\n" if s.default_text else f"  {s.env} (unset)\n") in epilog


def test_an_audit_client_certificate_needs_its_key() -> None:
    with pytest.raises(ConfigError, match="ARCHIVE_AUDIT_TLS_CERT and ARCHIVE_AUDIT_TLS_KEY"):
        Settings.from_env({"ARCHIVE_AUDIT_TLS_CERT": "/etc/cert.pem"})


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:8180/realms/archive", "http://localhost:8180/r",
                                    "http://[::1]:8180/r", "https://login.microsoftonline.com/t/v2.0"])
def test_an_issuer_is_https_or_on_loopback(issuer: str) -> None:
    s = Settings.from_env({"ARCHIVE_OIDC_ISSUER": issuer, "ARCHIVE_OIDC_AUDIENCE": "dicom-archive"})
    assert s.oidc_issuer == issuer


def test_an_issuer_needs_an_audience_and_the_metrics_port_its_own_port() -> None:
    with pytest.raises(ConfigError, match="^ARCHIVE_OIDC_AUDIENCE: required with ARCHIVE_OIDC_ISSUER"):
        Settings.from_env({"ARCHIVE_OIDC_ISSUER": "https://sso.example.com/realms/archive"})
    with pytest.raises(ConfigError, match="^ARCHIVE_METRICS_PORT: "):
        Settings.from_env({"ARCHIVE_METRICS_PORT": "8080"})
    assert Settings().metrics_port is None and Settings.from_env({"ARCHIVE_METRICS_PORT": "9102"}).metrics_port == 9102
