"""The DICOM receiver role: C-ECHO and C-STORE into the ingest service, and the host of every
DIMSE service of `serve` (two engines: ``asyncio_engine``, ``pynetdicom_engine``; one store path,
``store``; one status table, ``status``). Imports nothing heavy: no engine, no pynetdicom."""
