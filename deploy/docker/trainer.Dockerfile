# The GPU trainer: unsloth QLoRA in a pod on the GPU node, started by the `lora_adapter` asset
# through dagster-k8s Pipes. It runs scripts from cia_assets/pods/, which import dagster_pipes
# and never cia_assets.defs.
#   docker build -f deploy/docker/trainer.Dockerfile -t registry.example.com/cia/trainer:0.1.0 .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv git \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The CUDA build of torch comes with unsloth here; the CPU image never installs either.
RUN pip install --no-cache-dir "unsloth==2026.10.9" "dagster-pipes==1.13.27" "peft>=0.17" "mlflow>=3,<4"

WORKDIR /opt/cia
COPY cia_assets/pods ./pods
RUN groupadd --gid 10001 cia && useradd --uid 10001 --gid cia --home-dir /home/cia --create-home cia
ENV HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HOME=/home/cia
USER 10001:10001
ENTRYPOINT ["python", "-m"]
