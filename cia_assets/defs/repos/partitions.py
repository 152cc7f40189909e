import dagster as dg

# One partition per configured repository; the repo sensor adds them as cia.yaml grows.
repos_partitions = dg.DynamicPartitionsDefinition(name="repos")

OWNERS = ["team:cia-platform"]
