"""The VectorStore protocol and its two backends: Qdrant's engine in-process, and a Qdrant server."""
