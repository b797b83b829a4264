# The controller image: slim, non-root, the same Python install as scripts/setup
# (without the test extras and the local test servers).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# psql: the PostgreSQL probe runs a real query through it (restores run on the target host)
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/failover --create-home failover
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FAILOVER_JOURNAL=/var/lib/failover/journal.db
USER 10001
WORKDIR /var/lib/failover
ENTRYPOINT ["failoverctl"]
CMD ["--help"]
