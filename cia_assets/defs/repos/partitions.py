import dagster as dg

# One partition per configured repository; the repo sensor adds them as cia.yaml grows.
REPOS_PARTITIONS_NAME = "repos"
repos_partitions = dg.DynamicPartitionsDefinition(name=REPOS_PARTITIONS_NAME)
