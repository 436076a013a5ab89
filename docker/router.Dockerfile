# syntax=docker/dockerfile:1
# The iir router image: `iir serve` on port 8000, spec at /etc/iir/iir.yaml, SQLite registry
# in the /var/lib/iir volume. Build from the repository root:
#   docker build -f docker/router.Dockerfile -t iir-router .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY iir ./iir
RUN python -m venv /opt/iir \
 && /opt/iir/bin/pip install --no-cache-dir .

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="iir-router" \
      org.opencontainers.image.description="Intelligent Inference Router: OpenAI-compatible proxy driven by iir.yaml" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 iir \
 && useradd --system --uid 10001 --gid iir --home-dir /var/lib/iir --create-home --shell /usr/sbin/nologin iir
COPY --from=build /opt/iir /opt/iir
COPY iir.yaml /etc/iir/iir.yaml
ENV PATH=/opt/iir/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SQLITE_DB_PATH=/var/lib/iir/iir.db
USER 10001:10001
WORKDIR /var/lib/iir
VOLUME ["/var/lib/iir"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["iir"]
CMD ["serve", "--spec", "/etc/iir/iir.yaml", "--host", "0.0.0.0", "--port", "8000"]
