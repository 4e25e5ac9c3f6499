"""Score a table with a registered model as a Ray job (the same code as `rayapp batch-predict`):

    ray job submit --working-dir . -- python jobs/batch_predict.py \
        --model churn_model@production --data /data/to_score.parquet --out /data/scored

In a job, paths are read and written on the node that runs the driver (the head), and a
relative path would land in the job's temporary copy of the working directory: give absolute
paths. Every output row carries the model version and the data version; rows that break the contract
go, with the reason, to `<out>.quarantine/` and are never scored.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["batch-predict", *sys.argv[1:]], prog_name="jobs/batch_predict.py")
