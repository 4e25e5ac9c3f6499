"""Run the whole pipeline as a Ray job (the same code as `rayapp pipeline`):

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline.yaml

Exit status: 0 model promoted, 1 model trained but not promoted by the gate, 2 bad data.
A job runs unattended: submitting it is the confirmation that a model which passes the gate
may take `production` (`--yes`). A job whose driver was killed (`ray job stop`, a lost head
node) is resumed by submitting the same command again: steps it finished are not redone
(journal under `$RAYAPP_HOME/pipeline/`, see `ray_app.pipeline`).
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["pipeline", "--yes", *sys.argv[1:]], prog_name="jobs/pipeline.py")
