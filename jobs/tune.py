"""Run a hyperparameter search as a Ray job (the same code as `rayapp tune`):

    ray job submit --working-dir . -- python jobs/tune.py --search configs/search_space.yaml
    ray job submit --working-dir . -- python jobs/tune.py --resume   # after the driver died

Trials run wherever the cluster has room: CPU trials on CPU nodes, cuda trials on GPU nodes.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]], prog_name="jobs/tune.py")
