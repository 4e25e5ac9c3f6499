"""`rayapp`: the pipeline's stages for people at a terminal. Each command is a thin shell over
a library function that tests call directly."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import requests
import typer

if TYPE_CHECKING:
    from ray_app.config import PipelineConfig
    from ray_app.evaluate.gate import Gates
    from ray_app.evaluate.job import GateReport
    from ray_app.pipeline import PipelineResult

app = typer.Typer(
    rich_markup_mode="markdown",
    help="ray_app: validated, tracked, gated XGBoost models on one Ray cluster.",
    no_args_is_help=True,
)
data_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Datasets: snapshots and the built-in table.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
contract_app = typer.Typer(
    rich_markup_mode="markdown", help="Data contracts.", no_args_is_help=True
)
app.add_typer(contract_app, name="contract")
shadow_app = typer.Typer(
    rich_markup_mode="markdown", help="Shadow traffic: what the candidate would have answered."
)
app.add_typer(shadow_app, name="shadow")
keys_app = typer.Typer(
    rich_markup_mode="markdown", help="API keys of the prediction service.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

DEFAULT_URL = "http://127.0.0.1:8000"
DASHBOARD = "http://127.0.0.1:8265"
STORE_HELP = "data store URI (default: $RAYAPP_DATA_STORE, else $RAYAPP_HOME/data)"

ConfigOption = Annotated[
    Path, typer.Option(help="pipeline config (contract, gates, data, training, model name)")
]
AddressOption = Annotated[
    str | None, typer.Option(help="Ray address (default: RAY_ADDRESS or a local cluster)")
]
ContractOption = Annotated[
    Path | None, typer.Option(help="data contract (default: the pipeline config's)")
]
DataOption = Annotated[
    Path | None, typer.Option(help="CSV/Parquet file or folder (default: the config's)")
]
ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="registered model name (default: the pipeline config's)"),
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="move production without asking for confirmation")
]
FreshOption = Annotated[
    bool,
    typer.Option(help="start a new run even where a killed run of this config and data resumes"),
]


def print_result(result: PipelineResult) -> None:
    if not result.promoted:
        status = "NOT promoted: " + "; ".join(result.gate_reasons)
    else:
        status = "gate passed; " + (
            f"alias {', '.join(result.aliases)}" if result.aliases else "no alias moved"
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


def _pipeline_config(path: Path) -> tuple[PipelineConfig, Gates]:
    """The pipeline config and its gates file, both loaded and checked once, before any work
    starts; a bad file is a bad `--config` value (click's usage error, exit 2) naming the
    file and the field."""
    from ray_app.config import ConfigError, load_pipeline_config
    from ray_app.evaluate.gate import load_gates

    try:
        cfg = load_pipeline_config(path)
        return cfg, load_gates(cfg.gates)
    except (ConfigError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="'--config'") from None


def _model_name(config: Path, model: str | None) -> str:
    if model:
        return model
    from ray_app.publish import model_name

    return model_name(_pipeline_config(config)[0])


def _confirm(yes: bool):
    """Asks before production moves, unless `--yes`."""
    if yes:
        return None

    def ask(report: GateReport) -> bool:
        return typer.confirm(
            f"{report.model_name} version {report.version} passed the gate; move production "
            f"from {report.champion_version or 'nothing'} to it?"
        )

    return ask


def _run_pipeline(config: Path, address: str | None, yes: bool, **kwargs) -> None:
    from ray_app.data.ingest import DataError
    from ray_app.data.validate import ValidationTaskError
    from ray_app.pipeline import PipelineBusy, run
    from ray_app.runtime import init_ray
    from ray_app.train import ResourcesUnavailable

    cfg, gates = _pipeline_config(config)
    init_ray(address)
    try:
        result = run(cfg, gates=gates, confirm=_confirm(yes), **kwargs)
    except DataError as e:
        typer.echo(f"pipeline stopped: {e}", err=True)
        raise typer.Exit(2) from None
    except (ValidationTaskError, ResourcesUnavailable, PipelineBusy) as e:
        typer.echo(f"pipeline failed: {e}", err=True)
        raise typer.Exit(1) from None
    print_result(result)
    raise typer.Exit(0 if result.promoted else 1)


@app.command()
def pipeline(
    config: ConfigOption = Path("configs/pipeline.yaml"),
    data: DataOption = None,
    contract: ContractOption = None,
    address: AddressOption = None,
    yes: YesOption = False,
    fresh: FreshOption = False,
) -> None:
    """Validate, snapshot, featurise, train, track, register and gate in one run. A run of
    the same config and data that was killed is resumed after its last finished step."""
    _run_pipeline(config, address, yes, data=data, contract_path=contract, fresh=fresh)


@app.command()
def train(
    data_version: Annotated[str, typer.Option(help="snapshot to train on (rayapp data versions)")],
    config: ConfigOption = Path("configs/pipeline.yaml"),
    contract: ContractOption = None,
    address: AddressOption = None,
    yes: YesOption = False,
    fresh: FreshOption = False,
) -> None:
    """Train again on an existing data version: same version, config and seed, same model."""
    _run_pipeline(
        config, address, yes, data_version=data_version, contract_path=contract, fresh=fresh
    )


@app.command("tune")
def tune_command(
    config: ConfigOption = Path("configs/pipeline.yaml"),
    search: Annotated[Path, typer.Option(help="search space")] = Path("configs/search_space.yaml"),
    data: DataOption = None,
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

    cfg, _ = _pipeline_config(config)
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
        f"{result.best_trial_id} -> {result.model_name} v{result.model_version} (candidate); "
        f"judge it with: rayapp gate {result.model_name}@candidate"
    )


@app.command()
def gate(
    model: Annotated[
        str | None,
        typer.Argument(help="the version to judge: name@alias, name/version or a run id"),
    ] = None,
    run: Annotated[str | None, typer.Option(help="judge the version this run registered")] = None,
    config: ConfigOption = Path("configs/pipeline.yaml"),
    yes: YesOption = False,
) -> None:
    """Judge a registered version with every check in the gates file; a pass moves staging,
    then production (after confirmation, or with --yes)."""
    from mlflow.exceptions import MlflowException

    from ray_app import registry, tracking
    from ray_app.config import rayapp_home
    from ray_app.data.ingest import DataError
    from ray_app.evaluate.job import run_gate, write_files
    from ray_app.model.ref import ModelRef
    from ray_app.runtime import init_ray

    if (model is None) == (run is None):
        raise typer.BadParameter("give exactly one of MODEL or --run")
    try:
        ref = ModelRef.parse(model) if model else ModelRef(run_id=run)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'MODEL'") from None
    cfg, gates = _pipeline_config(config)
    init_ray(None)
    tracking.configure()
    try:
        report, moves = run_gate(cfg, ref, gates, _confirm(yes))
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
    model: ModelOption = None,
    config: ConfigOption = Path("configs/pipeline.yaml"),
    yes: YesOption = False,
) -> None:
    """Move alias `production` back in one step; the running service follows within seconds."""
    from ray_app import registry, tracking

    name = _model_name(config, model)
    tracking.configure()
    current = registry.aliased_version(name)
    target = to or "the version before it"
    if not yes and not typer.confirm(f"Move {name}@production from {current} to {target}?"):
        raise typer.Exit(1)
    try:
        move = registry.rollback(name, to)
    except registry.RegistryError as e:
        typer.echo(f"rollback refused: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"[rollback] {name}@{move.alias}: version {move.from_version} -> "
        f"{move.to_version} (run {move.run_id}, data {move.dataset_version}) by {move.by}"
    )


@app.command()
def history(
    model: ModelOption = None,
    alias: Annotated[str | None, typer.Option(help="only this alias")] = None,
    config: ConfigOption = Path("configs/pipeline.yaml"),
) -> None:
    """Every recorded alias move of a model (when, which versions, why, by whom), then its
    serving rollouts (deploys, switches, canary steps, rollbacks, promotions)."""
    from ray_app import registry, tracking

    name = _model_name(config, model)
    tracking.configure()
    for m in registry.alias_history(name, alias):
        typer.echo(
            f"{m.when}  {m.alias:<11} {m.from_version or '-':>4} -> {m.to_version:<4} "
            f"by {m.by:<10} data {m.dataset_version or '-'}  {m.reason}"
        )
    if alias is None:
        for e in registry.rollout_history(name):
            typer.echo(f"{e.when}  {e.action:<18} by {e.by:<10} {e.reason}")


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
    store: Annotated[
        str | None,
        typer.Option(
            help="data store URI (default: the config's data.store, else $RAYAPP_DATA_STORE, "
            "else $RAYAPP_HOME/data)"
        ),
    ] = None,
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
    rows: Annotated[int, typer.Option(min=1_000, max=10_000_000, help="rows to write")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed: same seed, same file")] = 42,
    shift: Annotated[list[str], typer.Option(help="drift: COLUMN=DELTA")] = [],  # noqa: B006
    churn_rate: Annotated[float | None, typer.Option(help="drift: class balance")] = None,
    effect: Annotated[
        list[str], typer.Option(help="concept drift: TERM=WEIGHT of the churn odds (synth.EFFECTS)")
    ] = [],  # noqa: B006
    nulls: Annotated[list[str], typer.Option(help="corruption: COLUMN=FRACTION")] = [],  # noqa: B006
    negative_amounts: Annotated[
        float, typer.Option(help="corruption: fraction of negative charges")
    ] = 0.0,
    future_dates: Annotated[
        float, typer.Option(help="corruption: fraction of dates in the future")
    ] = 0.0,
    numbers_as_strings: Annotated[
        list[str], typer.Option(help="corruption: COLUMN=FRACTION of numbers written as text")
    ] = [],  # noqa: B006
    swap: Annotated[str | None, typer.Option(help="corruption: swap two columns A,B")] = None,
) -> None:
    """Write the built-in customer-churn table, optionally drifted or corrupted."""
    from ray_app.data import synth

    drift = synth.Drift(
        shift=_pairs(shift, "--shift"),
        churn_rate=churn_rate or synth.DEFAULT_CHURN_RATE,
        effects=_pairs(effect, "--effect"),
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
    sample: Annotated[
        bool, typer.Option(help="send the input example logged with the production model")
    ] = False,
    url: Annotated[str, typer.Option(help="the service's base URL")] = DEFAULT_URL,
    model: Annotated[
        str | None,
        typer.Option(
            help="served model: POST to /v1/models/NAME:predict (default: /predict, the "
            "application's first model; --sample then takes the pipeline config's model)"
        ),
    ] = None,
    config: ConfigOption = Path("configs/pipeline.yaml"),
    wait: Annotated[float, typer.Option(help="seconds to wait for the service")] = 0.0,
) -> None:
    """POST a request to the running service and print the answer."""
    if sample == (file is not None):
        raise typer.BadParameter("give exactly one of --file or --sample")
    if sample:
        from ray_app import tracking
        from ray_app.model.logged import sample_request
        from ray_app.model.ref import ModelRef

        name = _model_name(config, model)
        tracking.configure()
        body = sample_request(ModelRef.parse(name))
    else:
        body = json.loads(file.read_text())  # type: ignore[union-attr]
    if wait:
        _wait_ready(url, wait)
    from ray_app.auth import client_key, default_keys_file

    key = client_key(default_keys_file())
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    route = f"{url}/predict" if model is None else f"{url}/v1/models/{model}:predict"
    response = requests.post(route, json=body, headers=headers, timeout=30)
    typer.echo(f"POST {route} -> {response.status_code}")
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code != 200:
        sys.exit(1)


ServeAddress = Annotated[
    str,
    typer.Option(
        envvar="RAY_DASHBOARD_ADDRESS", help="Ray dashboard (Serve's config API) of the cluster"
    ),
]
AppOption = Annotated[str, typer.Option(help="Serve application name")]


@app.command()
def deploy(
    candidate: Annotated[
        str | None, typer.Option(help="the new variant: name@alias, name/version or a run id")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="bluegreen, canary or shadow (with --candidate)")
    ] = None,
    switch: Annotated[bool, typer.Option(help="blue/green: all traffic to green")] = False,
    rollback: Annotated[bool, typer.Option(help="undo the current rollout")] = False,
    steps: Annotated[
        str, typer.Option(help="canary: percents of traffic, one per step, comma-separated")
    ] = "10,50,100",
    step_s: Annotated[float, typer.Option(help="canary: seconds at each step")] = 300.0,
    promote: Annotated[
        bool, typer.Option(help="canary: move production to it after the last step")
    ] = True,
    fraction: Annotated[
        float, typer.Option(help="shadow: share of requests mirrored, above 0 and at most 1")
    ] = 1.0,
    model: Annotated[
        str | None, typer.Option(help="served model (default: the application's first)")
    ] = None,
    address: ServeAddress = DASHBOARD,
    app_name: AppOption = "ray_app",
) -> None:
    """Roll out a candidate beside production (blue/green, canary or shadow), switch, or roll
    back, in the running application; applied in place within seconds, nothing restarts."""
    from pydantic import ValidationError

    from ray_app import tracking
    from ray_app.registry import RegistryError
    from ray_app.rollout import deploy as rollout

    tracking.configure()
    chosen = sum([switch, rollback, strategy is not None])
    if chosen > 1 or (strategy is None) != (candidate is None):
        raise typer.BadParameter(
            "give --strategy with --candidate, or --switch, or --rollback, or nothing (status)"
        )
    try:
        running = rollout.Running.read(address, app_name)
        name = model or next(iter(running.refs()))
        if strategy is not None:
            try:
                percents = [float(s) for s in steps.split(",")]
            except ValueError:
                raise typer.BadParameter(f"{steps!r}: give percents such as 10,50,100") from None
            route = rollout.start(
                running, name, strategy, candidate, percents, step_s, fraction, promote
            )
        elif switch:
            route = rollout.switch(running, name)
        elif rollback:
            route = rollout.rollback(running, name)
        else:
            route = running.route(name)
    except (rollout.DeployError, RegistryError, ValidationError) as e:  # a route out of bounds
        typer.echo(f"deploy refused: {e}", err=True)
        raise typer.Exit(2) from None
    shown = route.model_dump(mode="json", exclude_none=True) if route else "default route"
    typer.echo(f"[deploy] {name}: {json.dumps(shown)}")


@shadow_app.command("report")
def shadow_report(
    model: Annotated[str, typer.Option(help="served model name")] = "churn_model",
    since: Annotated[float | None, typer.Option(help="only the last SECONDS of records")] = None,
    store: Annotated[str | None, typer.Option(help=STORE_HELP)] = None,
) -> None:
    """Agreement rate, score differences and latency of the shadow against the primary."""
    from ray_app.data.store import open_store
    from ray_app.monitor.shadow import report

    start = None if since is None else time.time() - since
    typer.echo(json.dumps(report(open_store(store), model, start), indent=2))


@app.command()
def monitor(
    model: Annotated[str, typer.Option(help="served model name")] = "churn_model",
    config: Annotated[Path, typer.Option(help="thresholds and window")] = Path(
        "configs/monitor.yaml"
    ),
    window_s: Annotated[
        float | None, typer.Option(help="judge the last SECONDS of the log (default: config's)")
    ] = None,
    store: Annotated[str | None, typer.Option(help=STORE_HELP)] = None,
) -> None:
    """Drift of the production version's recent traffic against its training data (features,
    predictions, data quality); Evidently's report and the verdict go to MLflow."""
    from ray_app.data.store import open_store
    from ray_app.monitor.drift import load_monitor_config, run

    cfg = load_monitor_config(config)
    if window_s is not None:
        cfg = cfg.model_copy(update={"window_s": window_s})
    summary = run(model, cfg, open_store(store))
    typer.echo(
        f"[monitor] {summary.model} v{summary.version}: {summary.verdict} "
        f"({summary.rows} rows since {summary.window_from})"
    )
    for reason in summary.reasons:
        typer.echo(f"  - {reason}")
    if summary.mlflow_run_id:
        typer.echo(f"[monitor] report: MLflow run {summary.mlflow_run_id} (monitor/drift.html)")


@app.command("batch-predict")
def batch_predict_command(
    model: Annotated[str, typer.Option(help="NAME@ALIAS or NAME/VERSION (a name: production)")],
    data: Annotated[Path, typer.Option(help="CSV or Parquet table to score")],
    out: Annotated[Path, typer.Option(help="Parquet folder to write (must not exist)")],
    address: AddressOption = None,
) -> None:
    """Score a table through Ray Data with the one scoring path; the model version and data
    version on every row, rows that break the contract quarantined with the reason."""
    from ray_app import tracking
    from ray_app.model.batch import batch_predict, describe
    from ray_app.registry import RegistryError
    from ray_app.runtime import init_ray

    tracking.configure()
    init_ray(address)
    try:
        result = batch_predict(model, data, out)
    except (RegistryError, ValueError) as e:  # ValueError: bad data (DataError) or --model
        typer.echo(f"batch-predict refused: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo("\n".join(describe(result)))


@app.command()
def retrain(
    config: Annotated[Path, typer.Option(help="retrain config")] = Path("configs/retrain.yaml"),
    data: Annotated[
        str | None, typer.Option(help="new labelled data (default: the config's)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="say what would be done and why; do nothing")
    ] = False,
    force: Annotated[bool, typer.Option(help="retrain even if nothing calls for it")] = False,
    watch: Annotated[
        bool, typer.Option(help="check every watch.every_s, retrain when due")
    ] = False,
    address: AddressOption = None,
) -> None:
    """Retrain the served model when its schedule, drift or live quality calls for it: validate
    the new data, train, gate against production on it, and roll out a canary."""
    from ray_app import retrain as loop
    from ray_app.config import ConfigError
    from ray_app.runtime import init_ray

    try:
        cfg = loop.load_retrain_config(config)
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="'--config'") from None
    if watch:
        init_ray(address)
        loop.watch(cfg, data, log=typer.echo)
        return
    decision = loop.decide(cfg, data, force)
    loop.report(decision, typer.echo)
    if dry_run:
        for i, line in enumerate(decision.plan(cfg), 1):
            typer.echo(f"  {i}. {line}")
        return
    if not decision.retrain:
        return
    init_ray(address)
    try:
        journal = loop.execute(cfg, decision, typer.echo)
    except loop.RetrainBusy as e:
        typer.echo(f"retrain refused: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(1 if journal.outcome == loop.FAILED else 0)


@keys_app.command("create")
def keys_create(
    name: Annotated[
        str, typer.Option(help="the key's name (shown in logs, never the key)")
    ] = "default",
    file: Annotated[
        Path | None, typer.Option(help="key file (default: $RAYAPP_HOME/api_keys)")
    ] = None,
) -> None:
    """Create the service's key file (mode 0600) with a new key and print how to use it."""
    from ray_app.auth import create_key_file, default_keys_file

    path = file or default_keys_file()
    try:
        create_key_file(path, name)
        typer.echo(f"[keys] created {path} (mode 600) with key {name!r}")
    except FileExistsError:
        typer.echo(f"[keys] {path} exists; keeping it")
    # The key itself is never printed: terminals and CI logs keep what they show.
    typer.echo(f'[keys] send it as: -H "Authorization: Bearer $(cut -d: -f2- {path} | head -1)"')


@app.command()
def trace(
    request_id: Annotated[str, typer.Argument(help="the answer's request_id (X-Request-ID)")],
    model: Annotated[
        str | None, typer.Option(help="search only this model's log (default: every model's)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="search only from this UTC date or time (2026-11-25T14)")
    ] = None,
    store: Annotated[str | None, typer.Option(help=STORE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the trace as JSON")] = False,
) -> None:
    """From a logged prediction to the model version, run, gate report, dataset version and
    snapshot that produced it."""
    from dataclasses import asdict

    from ray_app.data.store import open_store
    from ray_app.monitor.predictions import FLUSH_S
    from ray_app.monitor.trace import TraceNotFound, describe, since_time
    from ray_app.monitor.trace import trace as find

    try:
        start = since_time(since) if since else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--since'") from None
    try:
        found = find(open_store(store), request_id, model, start, FLUSH_S)
    except TraceNotFound as e:
        typer.echo(f"trace: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(asdict(found), indent=2) if as_json else "\n".join(describe(found)))


labels_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Delayed labels: outcomes joined to the prediction log.",
    no_args_is_help=True,
)
app.add_typer(labels_app, name="labels")


@labels_app.command("ingest")
def labels_ingest(
    data: Annotated[Path, typer.Option(help="CSV/Parquet: id, label, optional label_time")],
    model: Annotated[str, typer.Option(help="served model name")] = "churn_model",
    config: Annotated[Path, typer.Option(help="thresholds (its live: section)")] = Path(
        "configs/monitor.yaml"
    ),
    store: Annotated[str | None, typer.Option(help=STORE_HELP)] = None,
) -> None:
    """Store labels that arrived later, join them to logged predictions by id and time, and
    judge each version's live quality, bias and attribution drift (reports go to MLflow)."""
    from ray_app.config import ConfigError
    from ray_app.data.ingest import DataError
    from ray_app.data.store import open_store
    from ray_app.monitor.drift import load_monitor_config
    from ray_app.monitor.labels import ingest
    from ray_app.monitor.live import live_quality
    from ray_app.registry import RegistryError

    cfg, data_store = load_monitor_config(config), open_store(store)
    try:
        added = ingest(data, model, data_store, cfg)
        report = live_quality(model, cfg, data_store)
    except (DataError, RegistryError, ConfigError, FileNotFoundError) as e:
        typer.echo(f"labels: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo("\n".join([*added.lines(), *report.lines()]))


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """The `rayapp` entry point (and the jobs'). What a person can act on is said in one line,
    not a traceback, whichever command raised it: the project's own errors (`RayAppError`),
    a service or cluster that does not answer, and an MLflow that cannot be reached or
    refuses a call, naming the tracking URI (redacted)."""
    from ray_app.config import redact_url, redact_urls_in
    from ray_app.errors import RayAppError

    try:
        app(args=args, prog_name=prog_name)
    except RayAppError as e:  # bad input (a ValueError) exits 2, anything else 1, as jobs do
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2 if isinstance(e, ValueError) else 1) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        where = redact_url(e.request.url) if e.request is not None else "the service"
        typer.echo(f"error: no answer from {where} ({type(e).__name__}); is it up?", err=True)
        raise SystemExit(1) from None
    except Exception as e:
        mlflow = sys.modules.get("mlflow")  # imported by then if the error came from it
        if mlflow is None or not isinstance(e, mlflow.exceptions.MlflowException):
            raise
        uri = redact_url(mlflow.get_tracking_uri())
        typer.echo(f"MLflow at {uri}: {redact_urls_in(e.message)}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
