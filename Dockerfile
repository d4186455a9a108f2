# syntax=docker/dockerfile:1
# Reporunner's image: one image for every role (`serve --only ROLE`, `migrate`, ...).
#   docker build -t reporunner .
#   docker run --rm -e DATABASE_URL=postgresql://... -p 8000:8000 reporunner
# It holds no PostgreSQL: DATABASE_URL is required (deploy/compose.yaml and
# deploy/kubernetes/ show a whole deployment). tests/unit/test_deploy_manifests.py
# checks this file's shape and that every ENV below is a setting the service knows.

# Stage 1: build the project's wheel and the wheels of all its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY domain/ domain/
COPY commands/ commands/
COPY projections/ projections/
COPY read_api/ read_api/
COPY write_api/ write_api/
COPY infrastructure/ infrastructure/
COPY migrations/ migrations/
COPY reporunner/ reporunner/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime, with the wheels installed and no build tools.
FROM python:3.11-slim AS runtime
# A fixed uid, so Kubernetes' runAsNonRoot can check it and volumes can be owned by it.
RUN groupadd --system --gid 10001 reporunner \
 && useradd --system --uid 10001 --gid reporunner --no-create-home \
      --home-dir /var/lib/reporunner --shell /usr/sbin/nologin reporunner \
 && install -d -o reporunner -g reporunner -m 0700 /var/lib/reporunner
# The embedded PostgreSQL is for laptops and tests; a container connects to
# DATABASE_URL, and without it refuses to start (exit 2) instead of keeping a
# database inside its throwaway file system.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels reporunner \
 && pip uninstall --yes pgserver
# Logs as JSON lines whatever the terminal; the first owner key (when the
# service makes one) goes under the data directory, which this user owns.
ENV REPORUNNER_LOG_FORMAT=json \
    REPORUNNER_DATA_DIR=/var/lib/reporunner
USER 10001:10001
WORKDIR /var/lib/reporunner
# 8000: the APIs; 9100: /metrics, /healthz and /readyz of the roles without an API.
EXPOSE 8000 9100
# Liveness only (/healthz never depends on PostgreSQL): on the metrics port when
# the container sets REPORUNNER_METRICS_PORT (roles without an API), else 8000.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('REPORUNNER_METRICS_PORT') or '8000'), timeout=2)"]
ENTRYPOINT ["reporunner"]
CMD ["serve", "--host", "0.0.0.0"]
