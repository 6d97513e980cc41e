"""ARCHIVE_SCP_ENGINE=pynetdicom: every DIMSE service on pynetdicom, and the host of the query/retrieve
and commitment services in both engines (the asyncio receiver hands those associations over).

``server`` runs the AE, ``contexts`` says what it accepts, ``handlers`` are its thin event handlers.
"""

from archive.scp.pynetdicom_engine.server import DicomServer, DimseService, StoreSCP

__all__ = ["DicomServer", "DimseService", "StoreSCP"]
