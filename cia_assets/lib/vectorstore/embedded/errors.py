"""What the embedded store raises beyond the shared `CollectionNotFound` / `CollectionExists`."""

from __future__ import annotations


class CollectionPublished(RuntimeError):
    """A write to a sealed (published) collection; use `open_for_update(alias)`."""


class CollectionBusy(RuntimeError):
    """The collection is being written by another process (its shard is locked there)."""


class SourceVanished(Exception):
    """The collection disappeared while a view of it was being made (dropped meanwhile)."""
