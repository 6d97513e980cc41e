import ipaddress

from archive.scp.access import AccessPolicy
from archive.scp.status import OUTCOME_STATUS, status_for_error
from archive.core.errors import BackendUnavailable, InvalidUID, MalformedDataset, UIDMismatch
from archive.ingest.service import Outcome


def test_open_policy_allows_everyone() -> None:
    assert AccessPolicy().check("ANY", "192.0.2.1") is None


def test_aet_allow_list() -> None:
    policy = AccessPolicy(allowed_aets=("CT1",))
    assert policy.check("CT1", "127.0.0.1") is None
    rejection = policy.check("EVIL", "127.0.0.1")
    assert rejection is not None and rejection.reason == 0x03  # calling AE not recognised


def test_network_allow_list() -> None:
    policy = AccessPolicy(allowed_networks=(ipaddress.ip_network("10.1.0.0/16"),))
    assert policy.check("A", "10.1.2.3") is None
    assert policy.check("A", "10.2.0.1") is not None
    assert policy.check("A", "not-an-ip") is not None


def test_status_table() -> None:
    assert OUTCOME_STATUS[Outcome.STORED].code == 0x0000
    assert OUTCOME_STATUS[Outcome.KEPT_FIRST].code == 0xB000
    assert status_for_error(BackendUnavailable("queue", "down")).code == 0xA700
    assert status_for_error(MalformedDataset("x")).code == 0xC000
    assert status_for_error(InvalidUID("SOPInstanceUID", "bad")).code == 0xC001
    assert status_for_error(UIDMismatch("x")).code == 0xA900
    assert status_for_error(RuntimeError("?")).code == 0x0110
