"""The dbt project, and nothing else: `dagster-dbt project prepare-and-package --file` imports
this module to prepare the manifest (`make install` does it), and `dagster dev` prepares it
through `prepare_if_dev`."""

from pathlib import Path

from dagster_dbt import DbtProject

analytics_project = DbtProject(project_dir=Path(__file__).parent / "dbt_project")
analytics_project.prepare_if_dev()
