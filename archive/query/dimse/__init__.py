"""The DIMSE services of the query side (PS3.4, PS3.7), as pynetdicom event handlers.

The receiver's pynetdicom server hosts them (:mod:`archive.scp`): in ``serve`` on the
receiver's port, in the ``query`` role on ARCHIVE_QUERY_DICOM_PORT.

- :mod:`~archive.query.dimse.identifier`: Q/R identifiers -> the query model, results -> responses
- :mod:`~archive.query.dimse.find`: the C-FIND handler (PS3.4 C.4.1)
- :mod:`~archive.query.dimse.retrieve`: the C-MOVE and C-GET handlers and their sub-operations (C.4.2, C.4.3)
- :mod:`~archive.query.dimse.service`: the Query/Retrieve service the server adds (contexts, handlers)
- :mod:`~archive.query.dimse.commitment`, :mod:`~archive.query.dimse.commitment_report`: Storage
  Commitment Push Model SCP (PS3.4 Annex J)
"""
