"""What the tests share, in one place: test doubles for services that cannot run here (speaking
their real protocols), git repo builders, Dagster materialization helpers, free ports and test
data builders. Test modules import from here, never from each other or from conftest."""
