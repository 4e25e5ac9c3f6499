"""Run the whole pipeline as a Ray job (the same code as `rayapp pipeline`):

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline.yaml

Exit status: 0 model promoted, 1 model trained but not promoted by the gate, 2 bad data.
"""

import sys

from ray_app.cli import app

if __name__ == "__main__":
    app(["pipeline", *sys.argv[1:]], prog_name="jobs/pipeline.py")
