"""Who owns the assets: shown in the Dagster UI and used for alerts. One list for every stage."""

OWNERS = ["team:cia-platform"]
