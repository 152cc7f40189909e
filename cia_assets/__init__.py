"""CIA: a self-hosted code intelligence assistant, as a Dagster code location."""
