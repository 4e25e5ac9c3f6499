"""The package's layering, as the README draws it: imports run one way, and only Ray Serve
(through `serve_config.yaml`) enters `serve/`, so training, batch scoring, monitoring, the
retraining loop and the CLI never load the Serve deployments to do their work; and the
Ray workers that read and check data import neither MLflow nor SciPy, those that score no MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ray_app"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(
        node.test
    )


def _imports(path: Path) -> set[str]:
    """Every `ray_app` module `path` imports at run time, at any depth (lazy imports inside
    functions too); imports only for type checkers are left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray_app"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ray_app"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules dropped)."""
    imports = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    return {m: {d for d in deps if d in imports and d != m} for m, deps in imports.items()}


def test_graph_sees_lazy_imports():
    """The check reads imports inside functions: the CLI's are all lazy."""
    assert "ray_app.rollout.deploy" in _graph()["ray_app.cli"]


def test_only_serve_imports_serve():
    users = {
        module: sorted(d for d in deps if d.startswith("ray_app.serve"))
        for module, deps in _graph().items()
        if not module.startswith("ray_app.serve")
    }
    assert {m: d for m, d in users.items() if d} == {}
    entry = [
        p
        for p in (ROOT / "jobs").glob("*.py")
        if any(d.startswith("ray_app.serve") for d in _imports(p))
    ]
    assert entry == []


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert cycles == []


# Seconds each adds to a Ray worker's start (measured with Ray Data and pandas loaded):
# MLflow 0.8, SciPy's stats 0.7.
HEAVY = ("mlflow", "scipy")


def _heavy_imports(*modules: str) -> list[str]:
    """The top-level packages of `HEAVY` that importing `modules` loads, in a fresh process."""
    code = (
        f"import sys, {', '.join(modules)}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip())


def test_data_workers_import_neither_mlflow_nor_scipy():
    """What a Ray Data task that validates, snapshots or computes features imports to
    unpickle its function: SciPy's stats serve only the driver's profile comparison."""
    modules = ("ray_app.data.validate", "ray_app.data.snapshot", "ray_app.features")
    assert _heavy_imports(*modules) == []


def test_scoring_workers_do_not_import_mlflow():
    """What a Ray Data scoring task (batch scoring, `score_dataset`) imports to unpickle its model
    (XGBoost brings SciPy with scikit-learn, which is not ours to drop)."""
    assert "mlflow" not in _heavy_imports("ray_app.model.batch", "ray_app.model.scoring")
