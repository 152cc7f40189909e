"""Scripts that run inside Kubernetes pods. They import dagster_pipes and their own ML stack,
never cia_assets.defs: the trainer image holds only this folder (deploy/docker/trainer.Dockerfile)."""
