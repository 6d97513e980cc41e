"""An asyncio-native C-ECHO / C-STORE receiver (PS3.8 Upper Layer, PS3.7 DIMSE by hand)."""

from archive.scp.fast.server import FastStoreSCP

__all__ = ["FastStoreSCP"]
