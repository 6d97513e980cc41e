"""Workarounds for our dependencies, in one place, installed explicitly.

Each module here holds every process-wide setting of one dependency and every patch of
its behaviour, with the reason and the upstream code or issue it works around. Nothing
else in the archive sets a dependency's globals or replaces its methods (a unit test,
tests/unit/test_compat.py, holds that). Each patch has a test that fails once upstream
changes the behaviour it works around, so that the patch gets removed.

- :mod:`archive.compat.pynetdicom`: its options, its spool directory, and C-STORE
  sub-operations of C-MOVE/C-GET sent from files, with the requestor as Move Originator
- :mod:`archive.compat.minio`: a PutObject with ``If-None-Match: *`` (create-if-absent in one
  request), which ``put_object`` cannot send
"""
