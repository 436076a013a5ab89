# syntax=docker/dockerfile:1
# The iir local agent image (transformers engine; CPU, or CUDA when the host has a GPU).
# `iir agent` on port 5000; models under the /models volume. Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t iir-agent .
# PyPI's torch wheel for Linux is the CUDA build (several GB). For a CPU-only image pass the
# PyTorch CPU wheel index:  --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU wheel index URL>
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY iir ./iir
RUN python -m venv /opt/iir \
 && /opt/iir/bin/pip install --no-cache-dir ".[agent]"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="iir-agent" \
      org.opencontainers.image.description="iir local agent: on-device inference that registers with the router" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 iir \
 && useradd --system --uid 10001 --gid iir --home-dir /var/lib/iir --create-home --shell /usr/sbin/nologin iir \
 && mkdir -p /models \
 && chown iir:iir /models
COPY --from=build /opt/iir /opt/iir
ENV PATH=/opt/iir/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/.hf \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /var/lib/iir
VOLUME ["/models"]
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
ENTRYPOINT ["iir", "agent"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
