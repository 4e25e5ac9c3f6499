"""Defects real files have: each is read correctly or named (file, line, column, counts) before
any training, and a failure that is not the data's is never blamed on it."""

import csv
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from ray_app.cli import app as cli
from ray_app.config import rayapp_home
from ray_app.data import synth
from ray_app.data.contract import ColumnSpec, ReferenceSpec
from ray_app.data.infer import infer
from ray_app.data.ingest import DataError, dataset_version, inspect_source, read_raw
from ray_app.data.validate import PRESENCE, TaskTraceback, validate

ROWS = 2_000
BATCH = 700  # several batches per file


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return synth.write(tmp_path_factory.mktemp("defects") / "clean.csv", ROWS, seed=31)


@pytest.fixture(scope="module")
def frame(clean) -> pd.DataFrame:
    return pd.read_csv(clean, dtype=str, keep_default_na=False)


def _validate(path: Path, contract, batch_size: int = BATCH):
    source = inspect_source(path, contract)
    return source, validate(read_raw(source), contract, source, batch_size)


def _with_spec(contract, column: str, **changes):
    columns = {**contract.columns, column: contract.columns[column].model_copy(update=changes)}
    return contract.model_copy(update={"columns": columns})


# A byte-order mark, as spreadsheets write "CSV UTF-8".


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_byte_order_mark_is_read_with_every_row(ray_session, contract, clean, tmp_path, newline):
    data = b"\xef\xbb\xbf" + clean.read_bytes().replace(b"\n", newline)
    path = tmp_path / "excel.csv"
    path.write_bytes(data)
    source, report = _validate(path, contract)
    assert source.columns == list(contract.columns)
    assert report.success, report.failures
    assert report.rows == ROWS
    assert source.version == hashlib.sha256(data).hexdigest()[:16] != dataset_version(clean)
    read = read_raw(source).to_pandas().reset_index(drop=True)
    expected = pd.read_csv(clean, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(read.astype(object), expected)  # the first column too


def test_byte_order_mark_in_a_draft(clean, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + clean.read_bytes())
    draft, rows = infer(path, "churned")
    assert rows == ROWS and list(draft["columns"])[0] == "customer_id"
    assert draft["columns"]["customer_id"]["roles"] == ["id"]


# A label with one class, and columns that must show every allowed value.


def test_single_class_label_stops_validation(ray_session, contract, frame, tmp_path):
    path = tmp_path / "one_class.csv"
    frame.assign(churned="0").to_csv(path, index=False)
    _, report = _validate(path, contract)
    failure = next(f for f in report.failures if f.expectation == PRESENCE)
    assert failure.column == "churned" and not report.quarantinable
    message = "label column 'churned' has one class: 0: 2000 rows; a model needs both 0 and 1"
    assert failure.examples == [message]
    with pytest.raises(DataError, match=message):
        report.raise_for_failures()


def test_a_class_seen_in_one_batch_only_counts(ray_session, contract, frame, tmp_path):
    path = tmp_path / "one_positive.csv"
    labels = ["0"] * (ROWS - 1) + ["1"]  # the only positive is in the last batch
    frame.assign(churned=labels).to_csv(path, index=False)
    _, report = _validate(path, contract)
    assert report.success, report.failures


def test_require_all_values_is_checked_across_batches(ray_session, contract, frame, tmp_path):
    strict = _with_spec(contract, "plan", require_all_values=True)
    never = tmp_path / "no_premium.csv"
    frame.assign(plan=frame.plan.replace("premium", "basic")).to_csv(never, index=False)
    _, report = _validate(never, strict)
    (failure,) = report.failures
    assert (failure.expectation, failure.column) == (PRESENCE, "plan")
    assert "never has allowed values ['premium']" in failure.examples[0]
    assert f"basic: {(frame.plan != 'standard').sum()} rows" in failure.examples[0]
    assert _validate(never, contract)[1].success  # only because the contract asks

    once = tmp_path / "one_premium.csv"
    plans = frame.plan.replace("premium", "basic")
    plans.iloc[ROWS - 1] = "premium"
    frame.assign(plan=plans).to_csv(once, index=False)
    assert _validate(once, strict)[1].success


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "integer", "require_all_values": True}, "needs the `allowed` values"),
        ({"type": "category", "allowed": ["a", "?"], "null_values": ["?"]}, "both allowed"),
    ],
)
def test_column_spec_refuses_contradictions(spec, message):
    with pytest.raises(ValidationError, match=message):
        ColumnSpec(**spec)


def test_cli_pipeline_exits_2_on_single_class_label(ray_session, pipeline_yaml, frame, tmp_path):
    path = tmp_path / "all_stay.csv"
    frame.assign(churned="0").to_csv(path, index=False)
    out = CliRunner().invoke(cli, ["pipeline", "--config", str(pipeline_yaml), "--data", str(path)])
    assert out.exit_code == 2, out.output
    assert "label column 'churned' has one class: 0: 2000 rows" in out.output
    folder = rayapp_home() / "reports" / dataset_version(path)
    saved = json.loads((folder / "validation.json").read_text())
    assert any("has one class" in e for f in saved["failures"] for e in f["examples"])
    assert "has one class" in (folder / "validation.html").read_text()


# Files cut short or ragged: the line and what is wrong with it, no traceback.


def _cut_in_third_field(path: Path) -> None:
    """Cut the file inside the last row's third field (a date, so 4 characters in)."""
    data = path.read_bytes().rstrip(b"\n")
    start = data.rfind(b"\n") + 1
    line = data[start:]
    second_comma = line.index(b",", line.index(b",") + 1)
    path.write_bytes(data[: start + second_comma + 5])


@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL], ids=["plain", "quoted"])
def test_file_cut_short_names_its_last_line(ray_session, contract, frame, tmp_path, capfd, quoting):
    path = tmp_path / "cut.csv"
    frame.to_csv(path, index=False, quoting=quoting)
    _cut_in_third_field(path)
    capfd.readouterr()
    with pytest.raises(DataError) as err:
        _validate(path, contract)
    assert str(err.value) == (
        f"{path}: could not be read as csv: line {ROWS + 1}: expected 13 fields, found 3 "
        "(is the file cut short?)"
    )
    assert "Traceback" not in capfd.readouterr().err


def test_lines_count_values_that_span_lines(ray_session, contract, frame, tmp_path):
    path = tmp_path / "multiline.csv"
    frame.assign(gender=frame.gender.where(frame.index != 5, "fe\nmale")).to_csv(path, index=False)
    _cut_in_third_field(path)
    with pytest.raises(DataError, match=f"line {ROWS + 2}: expected 13 fields, found 3"):
        _validate(path, contract)


def test_ragged_row_in_the_middle_names_its_line(ray_session, contract, clean, tmp_path):
    lines = clean.read_text().splitlines(keepends=True)
    lines[100] = lines[100].rstrip("\n") + ",extra\n"
    path = tmp_path / "ragged.csv"
    path.write_text("".join(lines))
    with pytest.raises(DataError) as err:
        _validate(path, contract)
    assert str(err.value).endswith("line 101: expected 13 fields, found 14")


def test_bytes_that_are_not_utf8_name_their_line(ray_session, contract, clean, tmp_path):
    lines = clean.read_bytes().splitlines(keepends=True)
    lines[1500] = lines[1500].replace(b",", b",\xe9", 1)  # latin-1 e-acute in a date
    position = lines[1500].index(b"\xe9") + 1
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        DataError, match=rf"line 1501: not UTF-8 text \(byte 0xe9 at position {position}\)"
    ):
        _validate(path, contract)


def test_corrupt_parquet_is_named(ray_session, contract, tmp_path):
    path = synth.write(tmp_path / "churn.parquet", 3_000, seed=3)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 4, len(data) // 2):  # data pages; the footer stays readable
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="could not be read as parquet: "):
        _validate(path, contract)


# A failure that is not the data's: reported as the task's own exception.


def test_a_bug_in_a_validation_task_is_not_blamed_on_the_data(ray_session, contract, churn_csv):
    broken = {"numeric": {"age": {"edges": [None]}}, "categorical": {}}  # a bug's stand-in
    buggy = contract.model_copy(
        update={"reference": ReferenceSpec(profile=Path("p.json"), data=broken)}
    )
    with pytest.raises(RuntimeError, match=r"validation task failed: TypeError: ") as err:
        _validate(churn_csv, buggy)
    assert not isinstance(err.value, DataError) and "could not be read" not in str(err.value)
    assert isinstance(err.value.__cause__, TaskTraceback)
    assert "profile.py" in str(err.value.__cause__)  # where the bug is, for whoever fixes it
