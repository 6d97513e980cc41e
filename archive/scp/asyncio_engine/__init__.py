"""ARCHIVE_SCP_ENGINE=asyncio: C-ECHO / C-STORE on asyncio streams, PS3.8 Upper Layer and PS3.7 DIMSE by hand.

``pdu`` encodes and parses, ``association`` runs one association, ``message`` spools and hashes
a dataset, ``handover`` passes other services to pynetdicom, ``receiver`` listens and accepts.
"""

from archive.scp.asyncio_engine.receiver import AsyncioReceiver

__all__ = ["AsyncioReceiver"]
