"""From a snapshot to a searchable collection: chunking, embeddings, lexical vectors, the pipeline."""
