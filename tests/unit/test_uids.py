import pytest

from archive.core.errors import InvalidUID
from archive.core.uids import object_key, uid_from_key, uid_problem, validate_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "0", "1.0.3", "2." + "1" * 62])
def test_valid_uids(uid: str) -> None:
    assert uid_problem(uid) is None
    assert validate_uid(uid, "X") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.03",  # leading zero
        "1..2",
        ".1.2",
        "1.2.",
        "1.2.a",
        "../../etc/passwd",
        "1.2/3",
        "1.2\x00",
        "1" * 65,
        " 1.2",
        "１.２",  # full-width digits
        "1.2.3\n",  # "$" of re.match matches before a final newline
        "1.2.3\r\n",
        None,
    ],
)
def test_hostile_uids_rejected(uid: object) -> None:
    assert uid_problem(uid) is not None
    with pytest.raises(InvalidUID):
        validate_uid(uid, "SOPInstanceUID")


def test_object_key_fans_out_and_round_trips() -> None:
    key = object_key("1.2.3.4")
    assert key.startswith("instances/") and key.endswith("/1.2.3.4.dcm")
    assert len(key.split("/")) == 4
    assert uid_from_key(key) == "1.2.3.4"
    assert uid_from_key("instances/00/00/1.2.3.4.dcm") is None  # wrong fan-out
    assert uid_from_key("other/x") is None


def test_object_key_refuses_invalid_uid() -> None:
    with pytest.raises(InvalidUID):
        object_key("../1.2")


def test_encode_uid_pads_odd_lengths_with_nul() -> None:
    from archive.core.uids import encode_uid

    assert encode_uid("1.2.3") == b"1.2.3\x00"  # PS3.5 9.1: UI padded with NUL to even length
    assert encode_uid("1.2.34") == b"1.2.34"
