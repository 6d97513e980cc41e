"""DICOMweb (PS3.18): the HTTP services of the archive under ``/dicom-web`` (and ``/wado``).

- :mod:`~archive.query.dicomweb.routes`: every route and the handler that answers it
- :mod:`~archive.query.dicomweb.qido`: QIDO-RS search (PS3.18 10.6)
- :mod:`~archive.query.dicomweb.wado`, :mod:`~archive.query.dicomweb.metadata`,
  :mod:`~archive.query.dicomweb.bulkdata`, :mod:`~archive.query.dicomweb.pixels`: WADO-RS (10.4)
- :mod:`~archive.query.dicomweb.wado_uri`: WADO-URI (Chapter 9)
- :mod:`~archive.query.dicomweb.stow`: STOW-RS (10.5), through the C-STORE ingest path
- :mod:`~archive.query.dicomweb.request`, :mod:`~archive.query.dicomweb.negotiation`,
  :mod:`~archive.query.dicomweb.multipart`, :mod:`~archive.query.dicomweb.cors`: what the handlers share
- :mod:`~archive.query.dicomweb.media`: frames, rendering and transcoding

Nothing here imports pynetdicom, even indirectly (an import-linter contract in pyproject.toml).
"""
