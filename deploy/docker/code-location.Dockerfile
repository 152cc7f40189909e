# The cia_assets code location (Dagster user deployment and run pods), CPU only.
#   docker build -f deploy/docker/code-location.Dockerfile -t registry.example.com/cia/code-location:0.1.0 .
FROM python:3.11.14-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cia
COPY pyproject.toml requirements.lock README.md ./
COPY cia_assets ./cia_assets
# CPU torch from PyTorch's CPU index (it only exports the embedding model to ONNX once), then
# the pinned set; no GPU packages, no secrets in any layer.
# The dbt manifest is prepared into the installed package at build time: the package is
# read-only at run time (dbt's run folders go to the data volume).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir -c requirements.lock . \
 && dagster-dbt project prepare-and-package \
      --file "$(python -c 'import cia_assets.defs.analytics.project as p; print(p.__file__)')" \
 && groupadd --gid 10001 cia && useradd --uid 10001 --gid cia --home-dir /home/cia --create-home cia

ENV HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 3030
CMD ["dagster", "api", "grpc", "--module-name", "cia_assets.definitions", "--host", "0.0.0.0", "--port", "3030"]
