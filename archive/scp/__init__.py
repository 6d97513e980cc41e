"""The DIMSE receiver role: C-ECHO and C-STORE into the ingest service."""
