"""The domain core: models, ports, errors and the query model. Imports no backend."""
