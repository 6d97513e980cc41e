"""Pixel data and encodings for DICOMweb: blocking work on a local (spooled) copy of an object.

- :mod:`~archive.query.dicomweb.media.frames`: single frames as stored or uncompressed (FrameReader)
- :mod:`~archive.query.dicomweb.media.render`: frames to JPEG/PNG (the PS3.3 C.11 grayscale pipeline)
- :mod:`~archive.query.dicomweb.media.transcode`: which transfer syntax an instance goes out in, and the conversion

Callers run these in a worker thread or executor, never on the event loop.
"""
