"""Gate limits from `configs/gates.yaml`: per registered model name over a `default` entry.
The checks are in `checks.py`, the gate job that applies them in `job.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_app.config import load_yaml


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def thresholds(gates_path: str | Path, model_name: str) -> dict[str, Any]:
    """The model's limits: `default`, overridden key by key by the model's own entry."""
    gates = load_yaml(gates_path)
    return _merge(gates.get("default", {}), gates.get(model_name, {}))
