"""MLflow runs in, the exercise's answers and plots out.

Every number comes from what the exercise sweeps logged, read through
`mlflow.search_runs` and `MlflowClient.get_metric_history` (nothing is cached on
the side), and each answer names the run it came from. A sweep that has not been
run is named as missing, with the command that runs it; the rest is still answered.

`load` reads the runs, `answers` computes the answers, `render` lays them out
(`parameters` the size question's), `publish` writes them out and logs them;
`document` is the Markdown/HTML writer.
"""

from pipeline.report.publish import write
from pipeline.report.render import missing_command

__all__ = ["missing_command", "write"]
