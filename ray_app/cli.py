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

from ray_app.config import PipelineConfig
from ray_app.pipeline import PipelineResult

app = typer.Typer(
    help="ray_app: validated, tracked, gated XGBoost models on one Ray cluster.",
    no_args_is_help=True,
)
data_app = typer.Typer(help="Datasets: the built-in churn table.", no_args_is_help=True)
app.add_typer(data_app, name="data")
contract_app = typer.Typer(help="Data contracts.", no_args_is_help=True)
app.add_typer(contract_app, name="contract")

DEFAULT_URL = "http://127.0.0.1:8000"


def print_result(result: PipelineResult) -> None:
    status = (
        "alias production" if result.promoted else "NOT promoted: " + "; ".join(result.gate_reasons)
    )
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


def _pipeline_config(path: Path) -> PipelineConfig:
    """The pipeline config and its gates, both checked before any work starts; a bad file is
    a bad `--config` value (click's usage error, exit 2) naming the file and the field."""
    from ray_app.config import ConfigError, load_pipeline_config
    from ray_app.evaluate.gate import thresholds

    try:
        cfg = load_pipeline_config(path)
        thresholds(cfg.gates, cfg.tracking.model_name)
    except (ConfigError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="'--config'") from None
    return cfg


def _run_pipeline(config: Path, address: str | None, **kwargs) -> None:
    from ray_app.data.ingest import DataError
    from ray_app.pipeline import run
    from ray_app.runtime import init_ray

    cfg = _pipeline_config(config)
    init_ray(address)
    try:
        result = run(cfg, **kwargs)
    except DataError as e:
        typer.echo(f"pipeline stopped: {e}", err=True)
        raise typer.Exit(2) from None
    print_result(result)
    raise typer.Exit(0 if result.promoted else 1)


ConfigOption = Annotated[Path, typer.Option(help="pipeline config")]
AddressOption = Annotated[str | None, typer.Option(help="Ray address (default: local)")]
ContractOption = Annotated[Path | None, typer.Option(help="contract (default: config's)")]


@app.command()
def pipeline(
    config: ConfigOption = Path("configs/pipeline.yaml"),
    data: Annotated[Path | None, typer.Option(help="CSV/Parquet (default: config's)")] = None,
    contract: ContractOption = None,
    address: AddressOption = None,
) -> None:
    """Validate, snapshot, featurise, train, track, register and gate in one run."""
    _run_pipeline(config, address, data=data, contract_path=contract)


@app.command()
def train(
    data_version: Annotated[str, typer.Option(help="snapshot to train on (rayapp data versions)")],
    config: ConfigOption = Path("configs/pipeline.yaml"),
    contract: ContractOption = None,
    address: AddressOption = None,
) -> None:
    """Train again on an existing data version: same version, config and seed, same model."""
    _run_pipeline(config, address, data_version=data_version, contract_path=contract)


@app.command("tune")
def tune_command(
    config: ConfigOption = Path("configs/pipeline.yaml"),
    search: Annotated[Path, typer.Option(help="search space")] = Path("configs/search_space.yaml"),
    data: Annotated[Path | None, typer.Option(help="CSV/Parquet (default: config's)")] = None,
    data_version: Annotated[str | None, typer.Option(help="search on this snapshot")] = None,
    name: Annotated[
        str | None, typer.Option(help="search name (default: from data version)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="resume a killed search (default: latest)")] = False,
    address: AddressOption = None,
) -> None:
    """Search hyperparameters with Ray Tune (CPU and GPU trials, ASHA, Optuna); every trial is
    an MLflow child run and the best model is registered with alias `candidate`."""
    from ray_app.config import ConfigError, load_search_config
    from ray_app.data.ingest import DataError
    from ray_app.runtime import init_ray
    from ray_app.tuning.search import SearchError, run_search
    from ray_app.tuning.space import NoGpuError

    cfg = _pipeline_config(config)
    try:
        space = load_search_config(search)
    except (ConfigError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="'--search'") from None
    init_ray(address)
    try:
        result = run_search(cfg, space, data, data_version, name, resume)
    except (DataError, SearchError, NoGpuError) as e:
        typer.echo(f"tune stopped: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"[done] search {result.name}: {result.trials} trials ({result.errors} errors); best "
        f"{result.best_params} -> {result.model_name} v{result.model_version} (candidate)"
    )


@app.command()
def gate(
    run: Annotated[str, typer.Option(help="MLflow run id of the candidate model")],
    config: ConfigOption = Path("configs/pipeline.yaml"),
) -> None:
    """Judge a candidate on every gate dimension; only a pass moves staging and production."""
    from mlflow.exceptions import MlflowException

    from ray_app import registry, tracking
    from ray_app.config import rayapp_home
    from ray_app.data.ingest import DataError
    from ray_app.evaluate.job import run_gate, write_files
    from ray_app.runtime import init_ray

    cfg = _pipeline_config(config)
    init_ray(None)
    tracking.configure()
    try:
        report, moves = run_gate(cfg, run)
    except (registry.RegistryError, DataError, MlflowException) as e:
        typer.echo(f"gate refused: {e}", err=True)
        raise typer.Exit(2) from None
    by_dimension: dict[str, list] = {}
    for r in report.results:
        by_dimension.setdefault(r.dimension, []).append(r)
    for dimension, results in by_dimension.items():
        failed = [r for r in results if not r.passed]
        status = "pass" if not failed else "FAIL"
        shown = failed or (results if len(results) <= 2 else [])
        detail = "; ".join(r.reason for r in shown) or f"{len(results)} checks"
        typer.echo(f"[gate] {dimension:<14} {status}  {detail}")
    page = write_files(report, rayapp_home() / "gate" / f"{report.model_name}-v{report.version}")
    for m in moves:
        typer.echo(
            f"[gate] {report.model_name}@{m.alias}: {m.from_version or '-'} -> {m.to_version}"
        )
    typer.echo(f"[gate] {'PASSED' if report.passed else 'FAILED'}; report {page}")
    raise typer.Exit(0 if report.passed else 1)


@app.command()
def rollback(
    to: Annotated[
        str | None, typer.Option(help="version (default: the previous production)")
    ] = None,
    model_name: str = "churn_model",
) -> None:
    """Move alias `production` back in one step; the running service follows within seconds."""
    from ray_app import registry, tracking

    tracking.configure()
    try:
        move = registry.rollback(model_name, to)
    except registry.RegistryError as e:
        typer.echo(f"rollback refused: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"[rollback] {model_name}@{move.alias}: version {move.from_version} -> "
        f"{move.to_version} (run {move.run_id}, data {move.dataset_version}) by {move.by}"
    )


@app.command()
def history(
    model_name: str = "churn_model",
    alias: Annotated[str | None, typer.Option(help="only this alias")] = None,
) -> None:
    """Every recorded alias move of a model: when, which versions, why, by whom."""
    from ray_app import registry, tracking

    tracking.configure()
    for m in registry.alias_history(model_name, alias):
        typer.echo(
            f"{m.when}  {m.alias:<11} {m.from_version or '-':>4} -> {m.to_version:<4} "
            f"by {m.by:<10} data {m.dataset_version or '-'}  {m.reason}"
        )


@contract_app.command("infer")
def contract_infer(
    data: Annotated[Path, typer.Option(help="a trusted CSV/Parquet sample")],
    label: Annotated[str, typer.Option(help="the label column")],
    out: Annotated[Path, typer.Option(help="where to write the draft")] = Path("contract.yaml"),
    name: Annotated[str | None, typer.Option(help="contract name")] = None,
    rows: Annotated[int, typer.Option(help="rows to sample")] = 100_000,
) -> None:
    """Draft a data contract from a trusted sample, for a person to edit."""
    from ray_app.data.contract import load_contract
    from ray_app.data.infer import add_reference_profile, infer, write_draft

    draft, sampled = infer(data, label, name, rows)
    write_draft(draft, out, data, sampled)
    profile = add_reference_profile(out, data, rows)
    contract = load_contract(out)  # the draft must at least be a valid contract
    typer.echo(
        f"wrote {out}: {len(contract.columns)} columns, label {contract.label_column!r}, "
        f"id {contract.id_column!r}, features {contract.feature_columns}; "
        f"reference profile {profile}"
    )


@data_app.command("versions")
def data_versions(
    config: ConfigOption = Path("configs/pipeline.yaml"),
    store: Annotated[str | None, typer.Option(help="store URI (default: config's)")] = None,
) -> None:
    """List validated data snapshots: version, rows, contract, source, when."""
    from ray_app.config import load_pipeline_config
    from ray_app.data.snapshot import list_snapshots
    from ray_app.data.store import open_store

    data_store = open_store(store or load_pipeline_config(config).data.store)
    snaps = list_snapshots(data_store)
    if not snaps:
        typer.echo(f"no snapshots in {data_store.uri}")
    for s in snaps:
        typer.echo(f"{s.version}  {s.rows:>10,} rows  {s.contract:<14} {s.created}  {s.source}")


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
