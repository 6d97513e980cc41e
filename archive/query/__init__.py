"""The query service (role ``query``): everything the archive answers about what it holds.

- :mod:`~archive.query.dicomweb`: DICOMweb (PS3.18): QIDO-RS, WADO-RS, WADO-URI, STOW-RS
- :mod:`~archive.query.search`: the JSON search API (free text, filters, facets)
- :mod:`~archive.query.dimse`: C-FIND, C-MOVE, C-GET and Storage Commitment, hosted by the
  receiver's pynetdicom server
- :mod:`~archive.query.routes` mounts the HTTP parts; :mod:`~archive.query.context` holds what
  their handlers share, :mod:`~archive.query.objects` reads stored objects back to local files,
  :mod:`~archive.query.openapi` describes every HTTP route.

Nothing is imported here: importing :mod:`archive.query.dicomweb` must not load pynetdicom.
"""
