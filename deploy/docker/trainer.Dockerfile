# The GPU trainer: unsloth QLoRA (`lora_adapter`) and the embedding model's fine-tune
# (`retrieval_adapter`) in pods on the GPU node, started through dagster-k8s Pipes. It runs scripts from cia_assets/pods/, which import dagster_pipes
# and never cia_assets.defs.
#   docker build -f deploy/docker/trainer.Dockerfile -t registry.example.com/cia/trainer:0.1.0 .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# Ubuntu 24.04's Python 3.12: the pod script imports dagster_pipes only, never cia_assets.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The set that ran the pod script on an H100 (cia_assets_tests/bench/bench_gpu_training.py).
# The CUDA build of torch comes from PyPI here; the CPU images never install it or unsloth.
RUN pip install --no-cache-dir \
      "torch==2.11.0" "transformers==5.17.0" "peft==0.21.0" "accelerate==1.15.0" \
      "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" "trl==1.15.0" "bitsandbytes==0.50.2" \
      "datasets==4.8.5" "torchao==0.18.0" "dagster-pipes==1.13.27" \
      "sentence-transformers==6.2.0"

WORKDIR /opt/cia
COPY cia_assets/pods ./pods
RUN groupadd --gid 10001 cia && useradd --uid 10001 --gid cia --home-dir /home/cia --create-home cia
ENV HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 HOME=/home/cia
USER 10001:10001
ENTRYPOINT ["python", "-m"]
