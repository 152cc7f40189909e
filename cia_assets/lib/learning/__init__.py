"""The learning loop: redaction, synthetic Q&A, training data, LoRA (CPU) and the GPU pod, the registry."""
