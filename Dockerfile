# syntax=docker/dockerfile:1
# Concord: one image for the API (`concord serve`) and the job workers (`concord worker`).
# docker-compose.yml shows the distributed deployment (PostgreSQL, Redis, MinIO).

# --- build: install the project and its dependencies into a virtualenv ---------------------------------
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/concord
WORKDIR /src
# Everything `pip install .` reads: pyproject.toml, its readme, and the packages it finds.
COPY pyproject.toml README.md ./
COPY concord_core ./concord_core
COPY lenses ./lenses
COPY workers ./workers
COPY migrations ./migrations
RUN /opt/concord/bin/pip install .

# --- runtime: the virtualenv only, run as an unprivileged user ------------------------------------------
FROM python:3.11.10-slim-bookworm
ENV PATH=/opt/concord/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONCORD_HOST=0.0.0.0 \
    CONCORD_PORT=8000 \
    CONCORD_DATA_DIR=/var/lib/concord
# backups/ exists in the image, owned by concord, so a volume mounted there (docker-compose.yml) is
# writable by `concord backup create`.
RUN groupadd --system --gid 10001 concord \
    && useradd --system --uid 10001 --gid concord --home-dir /var/lib/concord --create-home \
        --shell /usr/sbin/nologin concord \
    && install -d -o concord -g concord /var/lib/concord/backups
COPY --from=build /opt/concord /opt/concord
USER concord
WORKDIR /var/lib/concord
EXPOSE 8000
# The slim image has no curl; the standard library is enough. Non-2xx or no answer exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CONCORD_PORT', '8000'), timeout=4)"]
CMD ["concord", "serve"]
