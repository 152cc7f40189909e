# The chat app (web page, OpenAI-compatible API, /metrics) and the MCP server. In the cluster
# it answers through vLLM by URL, so llama.cpp is not built into it.
#   docker build -f deploy/docker/chat.Dockerfile -t registry.example.com/cia/chat:0.1.0 .
FROM python:3.11.14-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cia
COPY pyproject.toml requirements.lock README.md ./
COPY cia_assets ./cia_assets
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir -c requirements.lock . \
 && groupadd --gid 10001 cia && useradd --uid 10001 --gid cia --home-dir /home/cia --create-home cia

ENV HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8600
ENTRYPOINT ["cia"]
CMD ["serve", "--config", "/etc/cia/cia.yaml"]
