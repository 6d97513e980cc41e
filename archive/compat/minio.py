"""minio (7.2): one PUT with request headers of our own, for create-if-absent writes.

``Minio.put_object`` has no way to send a request header: everything in ``metadata`` that
is not ``x-amz-*`` or one of five content headers becomes user metadata
(``helpers.normalize_headers``), so ``If-None-Match: *`` would be stored as
``x-amz-meta-if-none-match`` and the write would not be conditional. S3's conditional
writes (AWS since 2024-08, MinIO, SeaweedFS: checked with both here) answer
``412 PreconditionFailed`` when the key exists, in the one request, where a HEAD then a PUT
takes two and lets two writers of one key both write. ``Minio._put_object`` (the single
PutObject request ``put_object`` itself ends in for an object of one part) takes headers
as given. tests/unit/test_compat.py fails when ``put_object`` grows a ``headers``
parameter: then call that and drop this module.
"""

from __future__ import annotations

from minio import Minio
from minio.error import S3Error

PRECONDITION_FAILED = "PreconditionFailed"


def put_if_absent(client: Minio, bucket: str, key: str, data: bytes, headers: dict[str, str]) -> bool:
    """PUT ``data`` under ``key`` unless the key exists: True if written, False if it existed.

    ``headers`` are sent as given (Content-Type, ``x-amz-meta-*``); other S3 errors raise.
    """
    try:
        client._put_object(bucket, key, data, headers={**headers, "If-None-Match": "*"})
    except S3Error as exc:
        if exc.code == PRECONDITION_FAILED:
            return False
        raise
    return True
