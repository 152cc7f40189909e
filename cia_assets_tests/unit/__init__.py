"""Unit tests: library code alone (no Dagster run, model server, CLI subprocess or browser)."""
