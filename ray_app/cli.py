"""`rayapp`: the pipeline's stages for people at a terminal. Each command is a thin shell over
a library function that tests call directly."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import requests
import typer

from ray_app.pipeline import PipelineResult

app = typer.Typer(
    help="ray_app: validated, tracked, gated XGBoost models on one Ray cluster.",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Datasets: the built-in churn table.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DEFAULT_URL = "http://127.0.0.1:8000"


def print_result(result: PipelineResult) -> None:
    status = "serving candidate" if result.promoted else "NOT promoted"
    print(
        f"[done] dataset {result.dataset_version} ({result.rows} rows) -> run {result.run_id} "
        f"-> {result.model_name} v{result.model_version}: {status}"
    )


def _pairs(values: list[str], what: str) -> dict[str, float]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{what} expects COLUMN=VALUE, got {item!r}")
        out[name] = float(value)
    return out


@app.command()
def pipeline(
    config: Annotated[Path, typer.Option(help="pipeline config")] = Path("configs/pipeline.yaml"),
    data: Annotated[Path | None, typer.Option(help="CSV/Parquet (default: built-in)")] = None,
    contract: Annotated[Path | None, typer.Option(help="contract (default: config's)")] = None,
    address: Annotated[str | None, typer.Option(help="Ray address (default: local)")] = None,
) -> None:
    """Validate, snapshot, featurise, train, track, register and gate in one run."""
    from ray_app.config import load_pipeline_config
    from ray_app.data.ingest import DataError
    from ray_app.pipeline import run
    from ray_app.runtime import init_ray

    cfg = load_pipeline_config(config)
    init_ray(address)
    try:
        result = run(cfg, data=data, contract_path=contract)
    except DataError as e:
        typer.echo(f"pipeline stopped: {e}", err=True)
        raise typer.Exit(2) from None
    print_result(result)
    raise typer.Exit(0 if result.promoted else 1)


@data_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="output .csv or .parquet")],
    rows: Annotated[int, typer.Option(min=1_000, max=10_000_000)] = 20_000,
    seed: int = 42,
    shift: Annotated[list[str], typer.Option(help="drift: COLUMN=DELTA")] = [],  # noqa: B006
    churn_rate: Annotated[float | None, typer.Option(help="drift: class balance")] = None,
    nulls: Annotated[list[str], typer.Option(help="corruption: COLUMN=FRACTION")] = [],  # noqa: B006
    negative_amounts: float = 0.0,
    future_dates: float = 0.0,
    numbers_as_strings: Annotated[list[str], typer.Option(help="COLUMN=FRACTION")] = [],  # noqa: B006
    swap: Annotated[str | None, typer.Option(help="corruption: swap two columns A,B")] = None,
) -> None:
    """Write the built-in customer-churn table, optionally drifted or corrupted."""
    from ray_app.data import synth

    drift = synth.Drift(
        shift=_pairs(shift, "--shift"), churn_rate=churn_rate or synth.DEFAULT_CHURN_RATE
    )
    corruption = synth.Corruption(
        nulls=_pairs(nulls, "--nulls"),
        negative_amounts=negative_amounts,
        future_dates=future_dates,
        numbers_as_strings=_pairs(numbers_as_strings, "--numbers-as-strings"),
        swap_columns=tuple(swap.split(",", 1)) if swap else None,  # type: ignore[arg-type]
    )
    started = time.perf_counter()
    path = synth.write(out, rows, seed, drift=drift, corruption=corruption)
    typer.echo(f"wrote {rows} rows to {path} in {time.perf_counter() - started:.1f}s")


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        if time.monotonic() > deadline:
            raise typer.BadParameter(
                f"no healthy service at {url} after {timeout_s:.0f}s (see `serve status`)"
            )
        time.sleep(1)


@app.command()
def predict(
    file: Annotated[Path | None, typer.Option(help='JSON file {"instances": [...]}')] = None,
    sample: Annotated[bool, typer.Option(help="send the production model's logged sample")] = False,
    url: str = DEFAULT_URL,
    model_name: str = "churn_model",
    wait: Annotated[float, typer.Option(help="seconds to wait for the service")] = 0.0,
) -> None:
    """POST a request to the running service and print the answer."""
    if sample == (file is not None):
        raise typer.BadParameter("give exactly one of --file or --sample")
    if sample:
        from ray_app import tracking
        from ray_app.pipeline import sample_request

        tracking.configure()
        body = sample_request(model_name)
    else:
        body = json.loads(file.read_text())  # type: ignore[union-attr]
    if wait:
        _wait_ready(url, wait)
    response = requests.post(f"{url}/predict", json=body, timeout=30)
    typer.echo(f"POST {url}/predict -> {response.status_code}")
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code != 200:
        sys.exit(1)


if __name__ == "__main__":
    app()
