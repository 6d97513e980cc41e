"""dicom-archive: a long-term DICOM archive.

Layout (dependencies point inward):

- ``archive.core``      models, ports (Protocols), errors, query model, retry policy; imports no backend
- ``archive.adapters``  one module per technology (filesystem, S3, SQLite, PostgreSQL, ...)
- ``archive.ingest``    the ingest service shared by C-STORE and STOW-RS
- ``archive.scp``       the DICOM receiver role: two engines (asyncio, pynetdicom) over one C-STORE path
- ``archive.indexer``   the queue consumer that writes catalog and search index
- ``archive.query``     the query service: DICOMweb, the search API, DIMSE query/retrieve and commitment
- ``archive.ops``       operations: verify
- ``archive.compat``    workarounds for dependencies (pynetdicom), in one place
- ``archive.compose``   the composition root: settings -> adapters
- ``archive.runtime``   running the roles; ``archive.cli`` the command
"""

__version__ = "0.1.0"
