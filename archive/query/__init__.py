"""The query service: QIDO-RS over the catalog (full Q/R comes with its own issue)."""
