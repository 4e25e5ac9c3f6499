"""Batch scoring through Ray Data with the one scoring path: versions on every row, rows that
break the contract quarantined with the reason, never scored."""

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ray_app import registry
from ray_app.cli import app as cli
from ray_app.data import synth
from ray_app.data.ingest import DataError, dataset_version, open_source
from ray_app.model.batch import _score_batch, batch_predict, judged, scoring_contract
from ray_app.model.logged import load
from ray_app.model.ref import ModelRef
from ray_app.model.scoring import Scorer

pytestmark = pytest.mark.e2e


def test_a_table_is_scored_with_versions_on_every_row_and_bad_rows_set_aside(
    result, contract, tmp_path
):
    data = synth.write(
        tmp_path / "to_score.csv",
        3_000,
        seed=41,
        corruption=synth.Corruption(negative_amounts=0.02),
    )
    name = result.model_name
    done = batch_predict(f"{name}@production", data, tmp_path / "scored")
    production = registry.aliased_version(name)
    frame = pd.read_csv(data)
    negative = frame["monthly_charge"] < 0
    assert done.rows == 3_000 and done.quarantined == int(negative.sum()) > 0
    assert done.scored == 3_000 - done.quarantined

    scored = pq.read_table(tmp_path / "scored").to_pandas()
    assert list(scored.columns) == [
        "customer_id",
        "probability",
        "label",
        "model_version",
        "data_version",
    ]
    assert set(scored["model_version"]) == {f"{name}/{production}"}
    assert set(scored["data_version"]) == {dataset_version(data)}
    assert set(scored["customer_id"]) == set(frame["customer_id"][~negative])
    # the same numbers as the one scoring path in this process
    mine = frame[~negative].set_index("customer_id")
    for column in ("signup_date", "last_login"):
        mine[column] = pd.to_datetime(mine[column])
    scorer = Scorer.of(load(ModelRef(name, version=production)))
    expected = scorer.proba(mine.reset_index())
    got = scored.set_index("customer_id").loc[mine.index, "probability"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert set(scored["label"]) <= {0, 1}

    bad = pq.read_table(done.quarantine).to_pandas()
    assert set(bad["customer_id"]) == set(frame["customer_id"][negative])
    assert bad["_quarantine_reason"].str.contains("monthly_charge").all()
    assert bad["monthly_charge"].str.startswith("-").all()  # kept as read


def test_the_label_and_sensitive_columns_may_be_absent_but_inputs_may_not(result, tmp_path):
    frame = pd.read_csv(synth.write(tmp_path / "full.csv", 1_000, seed=42))
    frame.drop(columns=["churned", "gender"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    done = batch_predict(result.model_name, tmp_path / "unlabelled.csv", tmp_path / "out")
    assert done.scored == 1_000 and done.quarantine is None
    # A label the model never reads is not checked: unknown outcomes (-1) are still scored.
    frame.assign(churned=-1).to_csv(tmp_path / "unknown.csv", index=False)
    done = batch_predict(result.model_name, tmp_path / "unknown.csv", tmp_path / "out3")
    assert done.scored == 1_000 and done.quarantine is None

    frame.drop(columns=["age"]).to_parquet(tmp_path / "no_age.parquet")
    with pytest.raises(DataError, match=r"missing columns \['age'\]"):
        batch_predict(result.model_name, tmp_path / "no_age.parquet", tmp_path / "out2")
    with pytest.raises(DataError, match="exists"):
        batch_predict(result.model_name, tmp_path / "unlabelled.csv", tmp_path / "out")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_wide_table_is_scored_from_its_judged_columns_and_set_aside_whole(result, tmp_path, fmt):
    """The scoring pass reads only the columns rows are judged by; a row set aside keeps every
    column it had, the ones never parsed to score it too."""
    frame = pd.read_csv(synth.write(tmp_path / "full.csv", 300, seed=45))
    frame["notes"] = "free text the contract does not name"
    frame["churned"] = "unknown"  # the label, which the model does not read
    frame.loc[7, "monthly_charge"] = -1.0
    path = tmp_path / f"wide.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    source = open_source(path)
    loaded = load(ModelRef(result.model_name, version=result.model_version))
    read = judged(scoring_contract(loaded.contract, source), source)
    assert "customer_id" in read and "gender" in read and not {"notes", "churned"} & set(read)

    done = batch_predict(result.model_name, path, tmp_path / "out")
    assert (done.scored, done.quarantined) == (299, 1)
    held = pq.read_table(done.quarantine).to_pandas()
    assert held["customer_id"].tolist() == [frame.loc[7, "customer_id"]]
    assert (held["notes"].tolist(), held["churned"].tolist()) == (
        [frame.loc[0, "notes"]],
        ["unknown"],
    )


def test_a_table_of_only_bad_rows_scores_nothing_and_loses_none(result, tmp_path):
    frame = pd.read_csv(synth.write(tmp_path / "full.csv", 200, seed=44))
    frame["monthly_charge"] = -frame["monthly_charge"].abs() - 1
    frame.to_parquet(tmp_path / "bad.parquet")
    done = batch_predict(result.model_name, tmp_path / "bad.parquet", tmp_path / "out")
    assert (done.rows, done.scored, done.quarantined) == (200, 0, 200)
    held = pq.read_table(done.quarantine).to_pandas()
    assert sorted(held["customer_id"]) == sorted(frame["customer_id"])
    assert not list(tmp_path.glob(".tmp-*"))  # no staging folder left behind
    assert pq.read_table(tmp_path / "out").schema == _scored_schema()  # a table of no rows


def test_an_empty_table_gives_an_empty_output_of_the_same_columns(result, tmp_path):
    """What reads the output next (a join, another job) finds a table of no rows with the
    usual columns and types, not an empty folder it cannot read."""
    frame = pd.read_csv(synth.write(tmp_path / "full.csv", 10, seed=45))
    frame.head(0).to_parquet(tmp_path / "empty.parquet")
    done = batch_predict(result.model_name, tmp_path / "empty.parquet", tmp_path / "out")
    assert (done.rows, done.scored, done.quarantined, done.quarantine) == (0, 0, 0, None)
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 0 and table.schema == _scored_schema()


def _scored_schema() -> pa.Schema:
    """The scored output's columns for the test contract (integer labels 0 and 1)."""
    return pa.schema(
        [
            ("customer_id", pa.string()),
            ("probability", pa.float64()),
            ("label", pa.int64()),
            ("model_version", pa.string()),
            ("data_version", pa.string()),
        ]
    )


def test_batch_predict_command(result, tmp_path, monkeypatch):
    """As from a shell with only `RAYAPP_HOME` set: the command finds MLflow there itself
    (MLflow's own default would be a new `mlflow.db` in the working directory)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    data = synth.write(tmp_path / "t.parquet", 1_000, seed=43)
    out = CliRunner().invoke(
        cli,
        ["batch-predict", "--model", f"{result.model_name}@production", "--data", str(data),
         "--out", str(tmp_path / "scored")],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "[batch] 1,000 rows of data version" in out.output
    assert Path(tmp_path / "scored").is_dir()
    missing = CliRunner().invoke(
        cli, ["batch-predict", "--model", result.model_name, "--data", str(tmp_path / "none.csv"),
              "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert missing.exit_code == 2 and "no such file" in missing.output
    assert not (tmp_path / "mlflow.db").exists()


def test_batch_predict_refuses_what_it_cannot_score_and_leaves_nothing_behind(result, tmp_path):
    """Each refusal names what was wrong; the folders claimed for the output and the
    quarantine at the start are gone again."""
    name = result.model_name
    data = synth.write(tmp_path / "t.csv", 200, seed=45)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text(data.read_text() + "C000000001,1\n")
    (tmp_path / "csvs").mkdir()
    shutil.copy(data, tmp_path / "csvs" / "a.csv")
    (tmp_path / "table").mkdir()
    pd.read_csv(data).to_parquet(tmp_path / "table" / "part-0.parquet")
    out = tmp_path / "x"
    cases = [
        (f"{name}/99", data, out, f"{name}/99 does not exist"),
        (name, tmp_path / "csvs", out, "must hold .parquet files"),
        (name, ragged, out, "line 202: expected"),
        (name, tmp_path / "table", tmp_path / "table" / "scores", "inside the folder it scores"),
        (name, data, Path("s3://bucket/scored"), "not object-store URIs"),
        (name, data, data / "scored", "cannot create the folder: Not a directory"),
    ]
    for model, source, target, message in cases:
        run = CliRunner().invoke(
            cli, ["batch-predict", "--model", model, "--data", str(source), "--out", str(target)]
        )
        assert run.exit_code == 2 and message in run.output, run.output
        assert not target.exists() and not Path(f"{target}.quarantine").exists()
    assert not list(tmp_path.rglob(".tmp-*"))
    assert not Path("s3:").exists()  # nothing written under the working directory


def test_a_job_refuses_a_relative_out_that_would_go_with_its_working_directory(
    result, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    monkeypatch.chdir(tmp_path)
    data = synth.write(tmp_path / "t.csv", 100, seed=46)
    run = CliRunner().invoke(
        cli, ["batch-predict", "--model", result.model_name, "--data", str(data), "--out", "x"]
    )
    assert run.exit_code == 2 and "give an absolute path" in run.output, run.output
    assert not (tmp_path / "x").exists()


def test_an_id_is_written_with_its_contract_type(result):
    """An integer id (as `contract infer` may choose) is parsed to a float like every integer
    column; it is written as an integer, a null where it did not parse."""
    loaded = load(ModelRef(result.model_name, version=result.model_version))
    columns = dict(loaded.contract.columns)
    columns["customer_id"] = columns["customer_id"].model_copy(
        update={"type": "integer", "pattern": None}
    )
    contract = loaded.contract.model_copy(update={"columns": columns})
    frame = next(synth.generate(3, seed=2)).astype("string").astype(object)
    frame["customer_id"] = ["1001", "1002", "C1"]
    batch = pa.Table.from_pandas(frame, preserve_index=False)  # as Ray Data hands it over
    table = _score_batch(batch, Scorer.of(loaded), contract.model_dump_json(), "v1")
    assert table.schema.field("customer_id").type == pa.int64()
    assert table["customer_id"].to_pylist() == [1001, 1002, None]
    assert table["_status"].to_pylist() == ["scored", "scored", "quarantined"]
    # a batch of only bad rows has no label to infer a type from: still the label's type
    bad = _score_batch(batch.slice(2), Scorer.of(loaded), contract.model_dump_json(), "v1")
    assert bad.schema == table.schema and bad["label"].to_pylist() == [None]


def test_the_execution_settings_are_put_back_even_when_scoring_fails():
    """They are session-wide: a failed run must not leave the next dataset of a notebook
    without Ray Data's resource budgets or with 32 MiB blocks."""
    import ray.data

    from ray_app.model.batch import _execution

    context = ray.data.DataContext.get_current()
    names = ("target_max_block_size", "target_min_block_size", "op_resource_reservation_enabled")
    before = [getattr(context, name) for name in names]
    with pytest.raises(RuntimeError, match="scoring failed"), _execution(1 << 20):
        assert context.op_resource_reservation_enabled is False
        assert context.target_max_block_size == context.target_min_block_size == 1 << 20
        raise RuntimeError("scoring failed")
    assert [getattr(context, name) for name in names] == before


def test_an_id_written_as_the_pandas_index_is_read_as_the_id(result, tmp_path):
    plain = pd.read_parquet(synth.write(tmp_path / "plain.parquet", 500, seed=44))
    plain.set_index("customer_id").to_parquet(tmp_path / "indexed.parquet")
    model = f"{result.model_name}@production"
    done = batch_predict(model, tmp_path / "indexed.parquet", tmp_path / "scored")
    assert done.scored == 500 and done.quarantined == 0
    scored = pq.read_table(tmp_path / "scored").to_pandas()
    assert set(scored["customer_id"]) == set(plain["customer_id"])


def test_a_column_the_model_does_not_read_sets_no_row_aside_unless_sensitive(result):
    """A slice-only column with a value outside its set is no reason not to score a row; a
    sensitive value outside its set is, as serving refuses it."""
    from ray_app.data.contract import ColumnSpec

    loaded = load(ModelRef(result.model_name, version=result.model_version))
    segment = ColumnSpec(type="category", allowed=["a", "b"], roles=["slice"])
    columns = {**loaded.contract.columns, "segment": segment}
    contract = loaded.contract.model_copy(update={"columns": columns})
    frame = next(synth.generate(3, seed=2)).astype("string").astype(object)
    frame["segment"] = ["a", "zzz", "b"]
    frame["gender"] = ["female", "male", "unknown"]
    batch = pa.Table.from_pandas(frame, preserve_index=False)
    table = _score_batch(batch, Scorer.of(loaded), contract.model_dump_json(), "v1")
    assert table["_status"].to_pylist() == ["scored", "scored", "quarantined"]


def test_a_table_partitioned_by_a_model_input_is_scored_as_the_whole_file(result, tmp_path):
    """`region=north/` folders carry a column the model reads: the partitioned table scores
    as the same rows in one file do."""
    whole = synth.write(tmp_path / "whole.parquet", 400, seed=46)
    frame = pd.read_parquet(whole)
    for region, rows in frame.groupby("region"):
        folder = tmp_path / "parts" / f"region={region}"
        folder.mkdir(parents=True)
        rows.drop(columns="region").to_parquet(folder / "part-0.parquet", index=False)
    model = f"{result.model_name}@production"
    parts = batch_predict(model, tmp_path / "parts", tmp_path / "parts-out")
    one = batch_predict(model, whole, tmp_path / "whole-out")
    assert (parts.scored, parts.quarantined) == (one.scored, one.quarantined) == (400, 0)
    scored = [
        pq.read_table(out).to_pandas().set_index("customer_id").sort_index()["probability"]
        for out in (parts.out, one.out)
    ]
    pd.testing.assert_series_equal(*scored)
