"""Judge drift of the production version's recent traffic as a Ray job (the same code as
`rayapp monitor`), for a schedule or a workflow to run:

    ray job submit --working-dir . -- python jobs/monitor.py --model churn_model --window-s 3600

The verdict and Evidently's report land in MLflow (experiment `ray_app-monitor`).
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["monitor", *sys.argv[1:]], prog_name="jobs/monitor.py")
