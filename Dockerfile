# dicom-archive: one image for every role; the role is the command, one of the entry scripts
# of cmd/ (copied to /opt/dicom-archive/cmd: serve, scp, indexer, query, migrate), as the Helm
# chart runs them. Without a command it runs `serve` (all roles, embedded backends under
# ARCHIVE_DATA_DIR).
#   docker build -t dicom-archive:0.1.0 .
#   docker run -p 11112:11112 -p 8080:8080 dicom-archive:0.1.0
#   docker run dicom-archive:0.1.0 /opt/dicom-archive/cmd/scp
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (see .dockerignore); psycopg, pydicom etc. come as wheels.
COPY pyproject.toml README.md /tmp/src/
COPY archive /tmp/src/archive
COPY cmd /opt/dicom-archive/cmd
RUN pip install /tmp/src \
 && rm -rf /tmp/src \
 && groupadd --system --gid 10001 archive \
 && useradd --system --uid 10001 --gid archive --no-create-home --home-dir /var/lib/dicom-archive \
    --shell /usr/sbin/nologin archive \
 && install -d -o archive -g archive /var/lib/dicom-archive

# The scp spools received datasets under $ARCHIVE_DATA_DIR/spool; in Kubernetes this is an
# emptyDir (the root filesystem is read-only there).
ENV ARCHIVE_DATA_DIR=/var/lib/dicom-archive
WORKDIR /var/lib/dicom-archive
VOLUME ["/var/lib/dicom-archive"]

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 11112 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ARCHIVE_HTTP_PORT', '8080'), timeout=4)"]

# SIGTERM (docker stop, Kubernetes) drains: allow 30 s + margin (`docker stop -t 45`).
STOPSIGNAL SIGTERM
CMD ["/opt/dicom-archive/cmd/serve"]
