"""Score a table with a registered model as a Ray job (the same code as `rayapp batch-predict`):

    ray job submit --working-dir . -- python jobs/batch_predict.py \
        --model churn_model@production --data s3://bucket/to_score.parquet --out scored/

Every output row carries the model version and the data version; rows that break the contract
go, with the reason, to `<out>.quarantine/` and are never scored.
"""

import sys

from ray_app.cli import app

if __name__ == "__main__":
    app(["batch-predict", *sys.argv[1:]], prog_name="jobs/batch_predict.py")
