"""The JSON search API (``/api/search``): :mod:`archive.query.search.api`."""
