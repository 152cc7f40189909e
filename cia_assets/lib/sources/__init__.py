"""Git mirrors and reading files at repo@sha:path."""
