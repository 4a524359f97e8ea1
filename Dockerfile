# hazardwatch application image: migrations, collector + HTTP API (`hazardwatch serve`)
# and the demo simulator, all from the one Python package. Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from (see [tool.hatch.build] in pyproject.toml): the
# packages, schema/ and the broker ACL template (both bundled into the wheel) and
# README.md (the package readme).
COPY pyproject.toml README.md ./
COPY deploy/mosquitto/acl ./deploy/mosquitto/acl
COPY hazardwatch ./hazardwatch
COPY ingest ./ingest
COPY rules ./rules
COPY alerting ./alerting
COPY simulators ./simulators
COPY schema ./schema
RUN pip install . && rm -rf /src

RUN useradd --system --no-create-home --shell /usr/sbin/nologin hazardwatch
USER hazardwatch
WORKDIR /home/hazardwatch

# serve binds HW_HTTP__HOST; docker-compose sets 0.0.0.0 so the port mapping reaches it.
EXPOSE 8080
CMD ["sh", "-c", "hazardwatch migrate && hazardwatch serve"]
