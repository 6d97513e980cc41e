"""dicom-archive: a long-term DICOM archive.

Layout (dependencies point inward):

- ``archive.core``      models, ports (Protocols), errors, query model; imports no backend
- ``archive.adapters``  one module per technology (filesystem, S3, SQLite, PostgreSQL, ...)
- ``archive.ingest``    the ingest service shared by C-STORE and (later) STOW-RS
- ``archive.scp``       the DIMSE receiver role
- ``archive.indexer``   the queue consumer that writes catalog and search index
- ``archive.query``     the query service (QIDO-RS, ...)
- ``archive.ops``       operations: verify
- ``archive.compose``   the composition root: settings -> adapters -> roles
"""

__version__ = "0.1.0"
