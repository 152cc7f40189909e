"""Integration tests: real Dagster materializations and sensors, real vector engines, in-process
HTTP servers and the fakes of Langfuse, Kubernetes and OpenAI-compatible APIs."""
