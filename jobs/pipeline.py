"""Run the whole pipeline as a Ray job:

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/pipeline.yaml
"""

import argparse
import sys

from ray_app.cli import print_result
from ray_app.config import load_pipeline_config
from ray_app.data.ingest import DataError
from ray_app.pipeline import run
from ray_app.runtime import init_ray


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/pipeline.yaml")
    parser.add_argument("--data", default=None, help="CSV/Parquet path (default: built-in data)")
    parser.add_argument("--contract", default=None, help="data contract (default: from config)")
    args = parser.parse_args()
    cfg = load_pipeline_config(args.config)
    init_ray()
    try:
        result = run(cfg, data=args.data, contract_path=args.contract)
    except DataError as e:
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 2
    print_result(result)
    return 0 if result.promoted else 1


if __name__ == "__main__":
    sys.exit(main())
