# syntax=docker/dockerfile:1
# The iir agent in front of vLLM, on the official vLLM OpenAI image (Linux + NVIDIA GPU).
# The image already holds torch and vLLM: iir is installed without the `agent` extra so none
# of them is replaced. `iir agent --engine vllm` starts the vLLM server as a child process.
#   docker build -f docker/agent-vllm.Dockerfile -t iir-agent-vllm .
ARG VLLM_IMAGE=vllm/vllm-openai:v0.10.2

FROM ${VLLM_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY iir ./iir
RUN python3 -m pip install --no-cache-dir . \
 && groupadd --system --gid 10001 iir \
 && useradd --system --uid 10001 --gid iir --home-dir /var/lib/iir --create-home --shell /usr/sbin/nologin iir \
 && mkdir -p /models \
 && chown iir:iir /models
ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/models/.hf \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /var/lib/iir
VOLUME ["/models"]
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
ENTRYPOINT ["iir", "agent", "--engine", "vllm"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
