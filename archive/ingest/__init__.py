"""Ingest: validate, store durably, queue for indexing. Shared by C-STORE and STOW-RS."""
