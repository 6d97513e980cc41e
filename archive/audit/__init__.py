"""The audit trail (PS3.15 A.5): messages, syslog transports, the local file, the buffer.

``messages`` builds the XML of each event type, ``syslog`` frames it (RFC 5424) and sends it
over UDP, TCP or TLS, ``logfile`` keeps the local append-only file, ``trail`` ties them together
behind the :class:`archive.core.audit.AuditTrail` port. It knows no role: roles describe events
as data (:mod:`archive.core.audit`) and the composition root wires a :class:`~trail.Trail` in.
"""
