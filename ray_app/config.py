"""Typed settings loaded from the YAML files in `configs/`: one place for every default.

Paths inside a config are resolved against the config file's folder's parent, so the same
file works from the repo root, from a `ray job submit --working-dir` copy and from tests.
A config leaves the process (MLflow artefacts, files beside Tune's state) only `redacted`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_app.errors import RayAppError


class ConfigError(RayAppError, ValueError):
    """A config file that does not say what it must; the message names the file and fields."""


class Strict(BaseModel):
    """A settings model: an unknown key is a typo, and an error."""

    model_config = ConfigDict(extra="forbid")


Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: Any, source: str) -> Model:
    """`model.model_validate(data)`, errors as one ConfigError: `source: field: why; ...`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


DATA_STORE_ENV = "RAYAPP_DATA_STORE"  # the store's URI where the config names none


class SplitConfig(Strict):
    train: float = 0.7
    valid: float = 0.15
    test: float = 0.15

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-9 or min(self.train, self.valid, self.test) <= 0:
            raise ValueError(f"split fractions must be positive and sum to 1, got {total}")
        return self


class DataConfig(Strict):
    path: Path | None = None  # input table; None means the built-in dataset
    synth_rows: int = Field(20_000, ge=1_000, le=10_000_000)
    seed: int = 42
    split: SplitConfig = SplitConfig()
    batch_size: int = Field(50_000, ge=1)
    # fail: any broken rule stops the run. quarantine: rows breaking row-level rules are set
    # aside with their reasons, and the run goes on if they are at most max_bad_fraction.
    policy: Literal["fail", "quarantine"] = "fail"
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    # Snapshot store: a local folder or any pyarrow filesystem URI (s3://bucket/prefix?region=..);
    # not set: $RAYAPP_DATA_STORE, else None, which means $RAYAPP_HOME/data (`default_store`).
    store: str | None = Field(None, validate_default=True)

    @field_validator("store")
    @classmethod
    def _store_from_environment(cls, value: str | None) -> str | None:
        """A cluster names one store for every node in their environment (cluster.yaml,
        kuberay/), so the same config file serves a laptop and a cluster."""
        return value or os.environ.get(DATA_STORE_ENV) or None


class TrainConfig(Strict):
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(2, ge=1)
    use_gpu: bool = False
    num_boost_round: int = Field(200, ge=1)
    early_stopping_rounds: int | None = 20
    seed: int = 42
    params: dict[str, Any] = Field(default_factory=dict)
    # How long training waits for the CPUs (and GPUs) it needs before it stops and says what
    # it asked for and what was free; it takes fewer CPUs per worker when only fewer are free.
    placement_timeout_s: float = Field(60, gt=0)
    # Fault tolerance: the model so far is checkpointed every `checkpoint_every` rounds (0: only
    # at the end), and Ray Train restarts a failed worker group (a lost node, a killed worker)
    # up to `max_failures` times (-1: no limit), resuming from the latest checkpoint.
    checkpoint_every: int = Field(0, ge=0)
    max_failures: int = Field(0, ge=-1)


class TrackingConfig(Strict):
    experiment: str = "ray_app"
    model_name: str | None = None  # the registered model; None: the contract's name


class PipelineConfig(Strict):
    contract: Path
    gates: Path
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()


class Dimension(Strict):
    """One searched hyperparameter: a range (uniform, loguniform, randint) or a set of values
    (choice; grid tries every value)."""

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Dimension:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"a {self.type} dimension needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} dimension needs `low` < `high`")
        return self


class AshaConfig(Strict):
    """Asynchronous successive halving on the validation metric, in boosting rounds."""

    enabled: bool = True
    grace_rounds: int = Field(50, ge=1)  # no trial is stopped before this many rounds
    reduction_factor: float = Field(3, gt=1)


class TrialResources(Strict):
    cpus_per_trial: int = Field(1, ge=1)  # a CPU trial asks for N CPUs and trains with N threads
    cpus_per_gpu_trial: int = Field(1, ge=1)
    gpus_per_trial: float = Field(1, gt=0)
    # What a trial given a GPU does where CUDA is absent (Ray's GPUs may be logical):
    # fallback trains on CPU and records it; fail stops the trial with the reason.
    on_missing_cuda: Literal["fallback", "fail"] = "fallback"


class DistributedConfig(Strict):
    """Above `min_rows` training rows a trial is a data-parallel Ray Train run."""

    min_rows: int = Field(2_000_000, ge=1)
    num_workers: int = Field(2, ge=1)


class SearchConfig(Strict):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    metric: str = "logloss"  # an `eval_metric` of training's params, on the validation split
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(16, ge=1)  # trials (for grid: repeats of the whole grid)
    max_concurrent_trials: int = Field(2, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = 42
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int | None = Field(30, ge=1)
    report_every: int = Field(10, ge=1)  # rounds between reports to Tune (ASHA's clock)
    checkpoint_every: int = Field(50, ge=1)  # rounds between trial checkpoints
    max_failures: int = Field(2, ge=-1)  # retries of a crashed trial
    asha: AshaConfig = AshaConfig()
    resources: TrialResources = TrialResources()
    distributed: DistributedConfig = DistributedConfig()
    # XGBoost params every trial shares beyond training's own (pipeline config `train.params`)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dimension]

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.checkpoint_every % self.report_every:
            raise ValueError("checkpoint_every must be a multiple of report_every")
        grid = any(d.type == "grid" for d in self.space.values())
        if grid != (self.algorithm == "grid"):
            raise ValueError("`grid` dimensions go with `algorithm: grid`, and only with it")
        return self


def load_search_config(path: str | Path) -> SearchConfig:
    """Load and validate `configs/search_space.yaml`."""
    return validate(SearchConfig, load_yaml(path), str(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as f:
        loaded = yaml.safe_load(f) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: expected a mapping at the top level, got {type(loaded).__name__}"
        )
    return loaded


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base` key by key, nested mappings merged the same way."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def _pipeline_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline file with its paths made absolute, laid over the file it `extends:`."""
    raw = load_yaml(path)
    root = path.parent.parent
    for key in ("contract", "gates"):
        if key in raw and not Path(raw[key]).is_absolute():
            raw[key] = str(root / raw[key])
    data = raw.get("data") or {}
    for key in ("path", "store"):
        value = data.get(key)
        if value and "://" not in str(value) and not Path(value).is_absolute():
            data[key] = str((root / value).resolve())
    base = raw.pop("extends", None)
    if base is None:
        return raw
    base_path = (path.parent / base).resolve()
    if base_path in (path, *seen):
        raise ConfigError(f"{path}: extends {base} in a cycle")
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base}, which is not a file ({base_path})")
    return merge(_pipeline_raw(base_path, (*seen, path)), raw)


def load_pipeline_config(path: str | Path) -> PipelineConfig:
    """Load and validate a pipeline config. Relative paths are taken from the project root
    (the config folder's parent); `extends: other.yaml` (beside it) states only differences."""
    path = Path(path).resolve()
    return validate(PipelineConfig, _pipeline_raw(path), str(path))


def rayapp_home() -> Path:
    """Where local state lives (data snapshots, MLflow store, Ray results): `$RAYAPP_HOME`,
    else `.rayapp` in the working directory, except in a Ray job (`ray job submit`), whose
    working directory is a temporary copy deleted with the session: there `~/.rayapp`."""
    if home := os.environ.get("RAYAPP_HOME"):
        return Path(home).resolve()
    return ((Path.home() if in_ray_job() else Path.cwd()) / ".rayapp").resolve()


def in_ray_job() -> bool:
    """Whether this is the driver of a Ray job (`ray job submit`), which runs in a temporary
    copy of its working directory, deleted when the job ends."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def results_root() -> Path:
    """Where Ray Train and Tune keep runs and checkpoints: `$RAYAPP_RESULTS` (on a cluster, a
    shared filesystem every node mounts at the same path, since Ray refuses a folder only the
    head can see), else `$RAYAPP_HOME/ray_results`."""
    return Path(os.environ.get("RAYAPP_RESULTS") or rayapp_home() / "ray_results").resolve()


def default_store() -> str:
    """The store of snapshots, prediction logs and labels where no config or option names one:
    `$RAYAPP_DATA_STORE`, else `$RAYAPP_HOME/data` (one machine's folder)."""
    return DataConfig().store or str(rayapp_home() / "data")


MASK = "***"
SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")
SECRET_PARAMS = (*SECRET_KEYS, "key", "signature")  # query names: `secret_key`, `X-Amz-Signature`


def _secret(name: str, words: tuple[str, ...]) -> bool:
    return any(word in name.lower() for word in words)


def redact_url(text: str) -> str:
    """`text` with a URL's password and secret query values masked; other strings unchanged.
    A URL too malformed to parse is masked whole rather than risk showing its secret."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return MASK
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        text = text.replace(parts.netloc, f"{userinfo.partition(':')[0]}:{MASK}@{host}", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(_secret(name, SECRET_PARAMS) for name, _ in pairs):
        masked = [(k, MASK if _secret(k, SECRET_PARAMS) else v) for k, v in pairs]
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        text = f"{text.partition('?')[0]}?{urlencode(masked, safe='*')}{fragment}"
    return text  # rebuilt by hand: `urlunsplit` turns `sqlite:////abs` into `sqlite://abs`


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_urls_in(text: str) -> str:
    """`text` (an error message) with every URL in it redacted as `redact_url` does."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redacted(obj: Any) -> Any:
    """A copy of a settings model, mapping, list or value fit to log or write to disk: values
    under secret-sounding keys (password, token, api_key...) masked, and credentials in URLs.
    Models become their JSON form, so this is what every logged or saved config goes through."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, Mapping):
        return {
            k: MASK if v not in (None, "") and _secret(str(k), SECRET_KEYS) else redacted(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redacted(v) for v in obj]
    return redact_url(obj) if isinstance(obj, str) else obj


def unredacted(saved: Any, current: Any) -> Any:
    """`saved` (a `redacted` copy) with its masked parts taken from `current` wherever the two
    agree once `current` is redacted too: resuming from a saved config needs the secrets that
    only the config given now holds (a rotated password is taken too)."""
    if isinstance(current, BaseModel):
        current = current.model_dump(mode="json")
    if redacted(current) == saved:
        return current
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return {
            k: current[k]
            if k in current and redacted({k: current[k]}) == {k: v}
            else unredacted(v, current.get(k))
            for k, v in saved.items()
        }
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [unredacted(s, c) for s, c in zip(saved, current, strict=True)]
    return saved
