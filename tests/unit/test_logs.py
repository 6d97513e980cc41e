import json
import logging

import pytest
from pydicom.dataset import Dataset

from archive import logs


def test_json_logs_carry_extra_fields_and_no_pydicom_values(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "json")
    try:
        ds = Dataset()
        ds.PatientBirthDate = "SECRET-DOB"  # pydicom warns, quoting the value
        ds.SOPInstanceUID = "1.2.SECRET"
        logging.getLogger("archive.test").warning("stored", extra={"sop_instance_uid": "1.2.3"})
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    assert "SECRET" not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["msg"] == "stored" and line["sop_instance_uid"] == "1.2.3" and line["level"] == "WARNING"


def test_an_extra_never_replaces_the_records_own_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "json")
    try:
        logging.getLogger("archive.test").info("C-FIND", extra={"level": "IMAGE", "logger": "x"})
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    line = json.loads(err.strip().splitlines()[-1])
    assert (line["level"], line["logger"]) == ("INFO", "archive.test")
    assert (line["extra_level"], line["extra_logger"]) == ("IMAGE", "x")


async def test_a_malformed_request_is_logged_without_its_text(capsys: pytest.CaptureFixture[str]) -> None:
    """aiohttp quotes the start of a request line it refuses: a query string that names a patient."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    logs.setup("INFO", "json")
    try:
        async with TestServer(web.Application()) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /dicom-web/studies?PatientName=SECRET^NAME&x=" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
            await writer.drain()
            assert b" 400 " in (await reader.read()).split(b"\r\n")[0]
            writer.close()
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    assert "SECRET" not in err
    line = next(json.loads(x) for x in err.splitlines() if "malformed HTTP request" in x)
    assert line["level"] == "WARNING" and "LineTooLong" in line["msg"] and "exc" not in line
