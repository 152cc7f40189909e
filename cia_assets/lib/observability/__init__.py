"""Traces, metrics, analytics tables and the Langfuse forwarder."""
