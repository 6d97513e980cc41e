"""Adapters: one module per technology, each implementing a port of archive.core.ports."""
