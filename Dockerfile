# dicom-archive: one image for every role; the role is the command, one of the entry scripts
# of cmd/ (copied to /opt/dicom-archive/cmd: serve, scp, indexer, query, migrate), as the Helm
# chart runs them. Without a command it runs `serve` (all roles, embedded backends under
# ARCHIVE_DATA_DIR). docs/deploy.md ("The image") says how to build and run it.
#   pip wheel --no-deps -w build/native ./native   # the native core's wheel (Rust), as scripts/image.sh does
#   docker build -t dicom-archive:0.1.0 .
#   docker run -p 11112:11112 -p 8080:8080 dicom-archive:0.1.0
#   docker run dicom-archive:0.1.0 /opt/dicom-archive/cmd/scp
#
# BASE_IMAGE: any image with Python 3.11+ and its venv module at python3 (python:3.11-slim by
# default; scripts/image.sh passes a Debian bookworm base it makes with debootstrap, as no
# registry is reachable there). BUILDER_IMAGE: the builder stage's base, the same by default
# (scripts/image.sh passes it with the build host's CA certificates for pip added).
#
# UI_BUILDER_IMAGE: the web UI's builder stage, any image with Node.js 20.19+ and npm (node:20-slim
# by default; scripts/image.sh passes the Debian base with the build host's Node.js added).
ARG BASE_IMAGE=python:3.11-slim
ARG BUILDER_IMAGE=${BASE_IMAGE}
ARG UI_BUILDER_IMAGE=node:20-slim

# ---- ui: the web UI (ui/: Vite, Preact, TypeScript) built from the committed lockfile -----------
# npm ci runs here (the network of the build: scripts/image.sh builds with --network host), not on
# the host: the image does not depend on what the host built, and node_modules of another platform
# (esbuild's and rollup's native binaries) never enter it. The output is what `make ui` writes,
# archive/query/ui/static, which the wheel carries; no Node.js in the image that runs.
FROM ${UI_BUILDER_IMAGE} AS ui
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false
WORKDIR /src/ui
# Dependencies first, from the lockfile alone, so that a change of the UI's code reuses this layer.
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund && npm cache clean --force
COPY ui/index.html ui/vite.config.ts ui/tsconfig.json ./
COPY ui/src ./src
RUN npm run build && test -f /src/archive/query/ui/static/index.html

# ---- builder: the wheel, installed with its dependencies into a venv ---------------------------
FROM ${BUILDER_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN python3 -m venv /opt/dicom-archive/venv \
 && /opt/dicom-archive/venv/bin/pip install --no-cache-dir --upgrade pip \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
 && /opt/dicom-archive/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY archive ./archive
COPY --from=ui /src/archive/query/ui/static ./archive/query/ui/static
# The native core (native/, Rust): its wheel is built on the host with its Rust toolchain
# (scripts/image.sh writes build/native; by hand: pip wheel --no-deps -w build/native ./native),
# for the Python of the base (CPython 3.11+, abi3; glibc of bookworm or later).
COPY build/native/*.whl /tmp/native/
# The wheel (pure Python), then a check that every native library of every wheel resolves here
# (manylinux wheels bring their own; a base without one would fail only when the code loads it).
# pip and setuptools are not needed at run time: the image has none.
RUN /opt/dicom-archive/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
 && /opt/dicom-archive/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/dicom_archive-*.whl /tmp/native/*.whl \
 && missing="$(find /opt/dicom-archive/venv -name '*.so*' -type f -exec ldd {} + 2>/dev/null | grep 'not found' || true)" \
 && if [ -n "$missing" ]; then echo "missing native libraries: $missing" >&2; exit 1; fi \
 && /opt/dicom-archive/venv/bin/python -c "import archive.cli, archive.compose, archive_native, psycopg, numpy, PIL.Image, pylibjpeg, libjpeg, openjpeg, rle; from psycopg import pq; print('libpq', pq.version())" \
 && /opt/dicom-archive/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# ---- the image: the venv, the entry scripts, an unprivileged user ------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/dicom-archive/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    TMPDIR=/tmp

# Numeric ids, so that Kubernetes' runAsNonRoot can check them; the home is the data directory.
RUN groupadd --system --gid 10001 archive \
 && useradd --system --uid 10001 --gid archive --no-create-home --home-dir /var/lib/dicom-archive \
    --shell /usr/sbin/nologin archive \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/dicom-archive

COPY --from=builder /opt/dicom-archive/venv /opt/dicom-archive/venv
COPY cmd /opt/dicom-archive/cmd

# Everything the archive writes is under $ARCHIVE_DATA_DIR (spool, embedded backends, object
# cache, audit file) or /tmp: with a read-only root filesystem, mount a volume (Kubernetes: an
# emptyDir) on each. The bytecode was compiled at build time; nothing writes next to the code.
ENV ARCHIVE_DATA_DIR=/var/lib/dicom-archive \
    HOME=/var/lib/dicom-archive
WORKDIR /var/lib/dicom-archive
VOLUME ["/var/lib/dicom-archive"]

USER 10001:10001
# DICOM (serve, scp), HTTP (every role), DICOM of the query role, DICOM over TLS
EXPOSE 11112 8080 11113 2762

# /healthz of the role's HTTP port (HTTPS when ARCHIVE_HTTP_TLS_CERT is set; not verified: loopback)
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, ssl, urllib.request as r; tls = bool(os.environ.get('ARCHIVE_HTTP_TLS_CERT')); r.urlopen('%s://127.0.0.1:%s/healthz' % ('https' if tls else 'http', os.environ.get('ARCHIVE_HTTP_PORT', '8080')), timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# SIGTERM (docker stop, Kubernetes) drains: stop accepting, finish what is in flight (30 s),
# close. Allow that plus a margin: `docker stop -t 45`, terminationGracePeriodSeconds 45.
STOPSIGNAL SIGTERM
CMD ["/opt/dicom-archive/cmd/serve"]
