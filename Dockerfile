# AudiFi chain indexer. Multi-stage: wheels are built in a full image, the runtime is slim
# and runs as an unprivileged user.
#   docker build -t audifi-indexer .
#   docker run --env-file indexer.env -p 9108:9108 audifi-indexer          # the daemon
#   docker run --env-file indexer.env audifi-indexer migrate               # schema upgrade

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt README.md ./
COPY indexer ./indexer
RUN PIP_CONSTRAINT=constraints.txt pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUDIFI_MIGRATIONS_DIR=/app/migrations \
    AUDIFI_ABI_DIR=/app/abis \
    AUDIFI_HTTP_PORT=9108 \
    AUDIFI_LOG_FORMAT=json
RUN groupadd --system --gid 10001 audifi \
 && useradd --system --uid 10001 --gid audifi --home-dir /app --shell /usr/sbin/nologin audifi
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels audifi-indexer \
 && rm -rf /wheels
WORKDIR /app
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root abis ./abis
COPY --chown=root:root alembic.ini ./
COPY --chown=root:root config/indexer.example.toml ./config/
USER audifi
EXPOSE 9108
# /healthz answers 200 while the loop is alive (see docs/operations.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AUDIFI_HTTP_PORT','9108'), timeout=4).status == 200 else 1)"
# SIGTERM finishes or rolls back the batch in hand and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["audifi-indexer"]
CMD ["run"]
