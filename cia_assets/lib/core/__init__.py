"""Records, paths, artifacts, access and the project's long-lived handles: what every stage shares."""
