# syntax=docker/dockerfile:1
# CPU image of the trigger-firewall sidecar. Build: docker build -t trigger-firewall .
# (The CUDA target and the embedded reference model come with the model detectors.)

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY firewall ./firewall
COPY detectors ./detectors
RUN /opt/venv/bin/pip install . \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM python:3.11-slim AS cpu
LABEL org.opencontainers.image.title="trigger-firewall" \
      org.opencontainers.image.description="Inference-time firewall against backdoor triggers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRIGGER_FIREWALL_CONFIG=/etc/trigger-firewall/config.yaml
COPY --from=builder /opt/venv /opt/venv
COPY deploy/config/firewall.yaml /etc/trigger-firewall/config.yaml
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/livez', timeout=2).status != 200)"]
ENTRYPOINT ["trigger-firewall", "serve"]
