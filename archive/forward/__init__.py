"""Forwarding: the rules the indexer applies after a commit, and the forwarder role that sends.

- :mod:`.rules_file`: ARCHIVE_ROUTING_RULES, reloaded when the file changes.
- :mod:`.router`: the indexer's hook: forward jobs onto each destination's queue.
- :mod:`.send`: one association to a DICOM peer, in a thread (pynetdicom).
- :mod:`.worker`: the forwarder: one consumer per destination, ledger, retries, dead letters.
"""
