"""The web UI: the built single-page application (``ui/`` in the repository, built by Vite into
``static/``) and the small settings document it starts from; mounted by :mod:`archive.query.routes`."""
