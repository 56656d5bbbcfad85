# The aiwrap image: one image, three roles (migrate, ingest, worker), chosen by
# the command; docker-compose.yml runs each with its own health check.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system aiwrap \
 && useradd --system --gid aiwrap --home-dir /home/aiwrap --create-home \
            --shell /usr/sbin/nologin aiwrap

# Install from a copy of the source, then drop it: the console script and the
# packages (schema.sql included) live in site-packages.
WORKDIR /src
COPY pyproject.toml README.md schema.sql ./
COPY requirements ./requirements
COPY core ./core
COPY ingest ./ingest
COPY workers ./workers
COPY cli ./cli
COPY devstack ./devstack
# The locked versions, then aiwrap itself without resolving anything again.
RUN pip install -r requirements/embedded.lock && pip install --no-deps . && rm -rf /src

WORKDIR /home/aiwrap
USER aiwrap

EXPOSE 8000
# Python is the health-check tool: no curl needed (see docker-compose.yml).
CMD ["aiwrap", "ingest", "--host", "0.0.0.0", "--port", "8000"]
