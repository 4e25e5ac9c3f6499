"""Retrain the served model as a Ray job (the same code as `rayapp retrain`): once, or as a
long-running watcher that checks its schedule, drift and live quality every `watch.every_s`:

    ray job submit --working-dir . -- python jobs/retrain.py --watch
    ray job submit --working-dir . -- python jobs/retrain.py --dry-run

Each retrain is an MLflow run (experiment `ray_app-retrain`) and a `rayapp history` entry.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["retrain", *sys.argv[1:]], prog_name="jobs/retrain.py")
