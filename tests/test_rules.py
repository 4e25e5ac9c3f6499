"""The vectorised checks (`data.rules`) agree with Great Expectations itself, row for row, on
data that breaks every kind of expectation a contract compiles to."""

import datetime as dt
import re

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ray_app.data import rules, synth
from ray_app.data.contract import Contract
from ray_app.data.ingest import coerce
from ray_app.data.validate import row_reasons


def _gx_unexpected(frame: pd.DataFrame, contract: Contract) -> dict[tuple[str, str], list[int]]:
    """Each check's offending row positions, as GX's pandas engine finds them."""
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("p")
        .add_dataframe_asset("a")
        .add_batch_definition_whole_dataframe("w")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = context.suites.add(gx.ExpectationSuite(name="s"))
    for expectation in contract.expectations():
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format="COMPLETE")
    found = {}
    for r in result.results:
        key = (
            r.expectation_config.type,
            r.expectation_config.kwargs.get("column")
            or ",".join(r.expectation_config.kwargs[k] for k in ("column_A", "column_B")),
        )
        found[key] = sorted(r.result.get("unexpected_index_list") or [])
    return found


def _broken_frame(contract: Contract) -> pd.DataFrame:
    """Built-in rows as text, with every kind of defect a contract checks per row."""
    frame = next(synth.generate(400, seed=3)).astype(str)
    frame.loc[1, "customer_id"] = "X123"  # regex
    frame.loc[2, "customer_id"] = ""  # null in a non-null column
    frame.loc[3, "monthly_charge"] = "-4.5"  # below min
    frame.loc[4, "monthly_charge"] = "1000.0"  # the bound itself passes
    frame.loc[5, "age"] = "101"  # above max
    frame.loc[6, "plan"] = "platinum"  # not in set
    frame.loc[7, "gender"] = "NA"  # null, tolerated up to a fraction
    frame.loc[8, "signup_date"] = "2014-12-31"  # date below min
    frame.loc[9, "last_login"] = "2099-01-01"  # date after today
    frame.loc[10, ["signup_date", "last_login"]] = ["2022-05-02", "2022-05-01"]  # pair rule
    frame.loc[11, "last_login"] = ""  # pair with one side missing: not judged
    frame.loc[12, ["signup_date", "last_login"]] = ["", ""]  # both missing: not judged
    frame.loc[13, "churned"] = "2"
    return frame


@pytest.mark.parametrize("pair_equal", [False, True])
def test_every_check_finds_the_rows_gx_finds(contract, pair_equal):
    if pair_equal:  # the `==` rule compiles to a different GX type
        spec = contract.model_dump(mode="json")
        spec["rules"] = [{"column": "last_login", "op": "==", "other": "signup_date"}]
        contract = Contract.model_validate(spec)
    typed, _ = coerce(_broken_frame(contract), contract)
    expected = _gx_unexpected(typed, contract)
    assert len(expected) == len(contract.checks())
    for check in contract.checks():
        mask = rules.broken(typed, check)
        assert np.flatnonzero(mask).tolist() == expected[check.key], check.key
    assert sum(bool(v) for v in expected.values()) >= 8  # the frame really breaks things


def test_examples_show_the_offending_values(contract):
    typed, _ = coerce(_broken_frame(contract), contract)
    check = next(c for c in contract.checks() if c.key == (rules.BETWEEN, "monthly_charge"))
    assert rules.examples(typed, check, rules.broken(typed, check), 5) == ["-4.5"]
    pair = next(c for c in contract.checks() if c.type == rules.GREATER)
    shown = rules.examples(typed, pair, rules.broken(typed, pair), 5)
    assert shown[0] == "last_login=2022-05-01 00:00:00, signup_date=2022-05-02 00:00:00"
    missing = next(c for c in contract.checks() if c.key == (rules.NOT_NULL, "customer_id"))
    assert rules.examples(typed, missing, rules.broken(typed, missing), 5) == ["None"]  # not <NA>


def test_row_reasons_name_every_rule_a_row_breaks(contract):
    _, reasons = row_reasons(_broken_frame(contract), contract.model_dump_json())
    assert reasons[3] == "expect_column_values_to_be_between(monthly_charge)"
    assert reasons[7] == ""  # a null gender is within the column's tolerated fraction
    pair = "expect_column_pair_values_a_to_be_greater_than_b(last_login,signup_date)"
    assert reasons[10] == pair
    assert reasons[11] == "expect_column_values_to_not_be_null(last_login)"  # pair not judged
    assert reasons[0] == ""


def test_a_check_type_without_a_vectorised_form_is_refused():
    check = rules.Check("expect_column_values_to_be_dateutil_parseable", {"column": "a"})
    with pytest.raises(ValueError, match="no vectorised form"):
        rules.broken(pd.DataFrame({"a": [dt.date(2020, 1, 1)]}), check)


ODD_NUMBERS = [
    " 12 ",
    "1e3",
    "+4",
    "-0",
    ".5",
    "5.",
    "1_000",
    "0x1A",
    "inf",
    "-Infinity",
    "NaN",
    "NAN",
    "1,5",
    "\u0661\u0662",
    "12abc",
    "",
    " ",
    "null",
    "?",
    "3.0",
    "3.5",
    "9007199254740993",
]


@pytest.mark.parametrize("kind", ["integer", "float"])
@pytest.mark.parametrize("text", ODD_NUMBERS)
def test_arrow_parsing_of_numbers_agrees_with_pandas(kind, text):
    """`coerce` parses text columns with Arrow's kernels; pandas' `to_numeric` is the
    definition, taken whenever Arrow cannot parse a column."""
    from ray_app.data import ingest
    from ray_app.data.contract import ColumnSpec

    spec = ColumnSpec(type=kind, null_values=["?"])
    raw = pd.Series([text, "7"], index=[10, 11], dtype=object)
    fast = ingest._coerce_text(raw, ingest._trimmed(raw), spec)
    blank = ingest._blank(raw, spec)
    slow = ingest._parse(raw, kind).where(~blank)
    slow_bad = ~blank & ingest._parse(raw, kind).isna().to_numpy()
    if fast is not None:  # else pandas decides, as above
        values, bad = fast
        pd.testing.assert_series_equal(values, slow, check_names=False)
        assert bad.tolist() == slow_bad.tolist()


ODD_DATES = [
    "2026-01-05",
    " 2026-01-05 ",
    "2026-01-05 10:11:12",
    "2026-01-05T10:11:12.123456789",
    "2026-01-05T10",
    "2026-01-05T10:11:12Z",
    "2026-01-05T10:11:12+02:00",
    "20260105",
    "2026-1-5",
    "2026/01/05",
    "2026-01",
    "2026-02-30",
    "2026-01-05T25:00:00",
    "0001-01-01",
    "2262-04-12",
    "2026-W01",
    "05/01/2026",
    "",
    "null",
    "?",
]


@pytest.mark.parametrize("text", ODD_DATES)
def test_arrow_parsing_of_dates_agrees_with_pandas(text):
    """Where Arrow parses a date column at all, it gives what pandas' ISO 8601 parser gives;
    anything else is left to pandas."""
    from ray_app.data import ingest
    from ray_app.data.contract import ColumnSpec

    spec = ColumnSpec(type="date", null_values=["?"])
    raw = pd.Series([text, "2026-07-01"], index=[10, 11], dtype=object)
    fast = ingest._coerce_text(raw, ingest._trimmed(raw), spec)
    blank = ingest._blank(raw, spec)
    slow = ingest._parse(raw, "date")
    assert slow[11] == pd.Timestamp("2026-07-01")
    if fast is not None:
        values, bad = fast
        pd.testing.assert_series_equal(values, slow.where(~blank), check_names=False)
        assert not (~blank & slow.isna().to_numpy()).any() and not bad.any()


def test_date_columns_take_the_arrow_path():
    from ray_app.data import ingest
    from ray_app.data.contract import ColumnSpec

    raw = pd.Series(["2026-01-05", "", "2026-07-01 08:00:00"], dtype=object)
    values, _ = ingest._coerce_text(raw, ingest._trimmed(raw), ColumnSpec(type="date"))
    assert values.tolist()[::2] == [pd.Timestamp("2026-01-05"), pd.Timestamp("2026-07-01 08:00")]
    assert values.isna().tolist() == [False, True, False]


def test_dates_with_a_zone_are_that_instant_in_utc_and_checked_like_any_other(contract):
    """Arrow refuses a zone, so such a batch takes pandas' path: a mix of zones and none there
    once left objects that every date bound failed on with a TypeError, stopping the job."""
    frame = next(synth.generate(3, seed=1)).astype("string").astype(object)
    frame["signup_date"] = ["2021-01-01", "2021-01-01T05:00:00Z", "2021-01-02T00:00:00+02:00"]
    frame["last_login"] = ["2024-03-01T10:00:00-05:00", "1999-01-01T00:00:00Z", "2024-03-01"]
    typed, reasons = row_reasons(frame, contract.model_dump_json())
    assert typed["signup_date"].tolist() == [
        pd.Timestamp("2021-01-01"),
        pd.Timestamp("2021-01-01 05:00"),
        pd.Timestamp("2021-01-01 22:00"),
    ]
    assert typed["last_login"][0] == pd.Timestamp("2024-03-01 15:00")
    assert reasons[0] == "" and reasons[2] == ""
    assert "last_login" in reasons[1]  # before the contract's minimum: broken, not a crash


def test_a_parquet_timestamp_with_a_zone_is_read_in_utc():
    from ray_app.data import ingest

    raw = pd.Series(pd.to_datetime(["2026-01-05T10:00:00+01:00"], utc=True))
    assert ingest._parse(raw, "date").tolist() == [pd.Timestamp("2026-01-05 09:00")]


PATTERNS = [
    r"^C\d{9}$",
    r"^[A-Z]{2}-\d+(?:\.\d+)?$",
    r"a{,2}x",  # `{,n}`: a bound in `re`, literal text in RE2's syntax
    r"^\w+\s\w+$",
    r"[^a-z0-9]",
    r"^(?:ab|cd)*?$",
    r"x$",  # `re` also matches before a final newline
    r"^.b",
    r"\bword\b",  # no twin: a Unicode word boundary in `re`
    r"[^\d]",  # no twin: RE2's \d is ASCII, so its negation matches more
    r"(?i)^abc$",  # no twin: flags
    r"(a)\1",  # no twin: RE2 has no back-references
]
TEXTS = [
    "C123456789",
    "C12345678",
    "C\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",  # Arabic-Indic digits: `re`'s \d
    "C123456789\n",
    "AB-12.5",
    "AB-12.",
    "aax",
    "a{,2}x",
    "x",
    "hello world",
    "h\u00e9llo w\u00f6rld",  # \w beyond ASCII
    "hello\u00a0world",  # \s beyond ASCII
    "abcd",
    "ab\n",
    "x\n",
    "\nb",
    "ab",
    "a word here",
    "wordy",
    "caf\u00e9word",
    "\u0663",
    "ABC",
    "aa",
    "",
]


@pytest.mark.parametrize("dtype", [object, pd.ArrowDtype(pa.string())])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_rule_is_python_re_whatever_engine_answers_first(pattern, dtype):
    """`_regex` lets Arrow's RE2 vouch for the values it matches and asks `re` about the rest;
    on text where the two engines differ, the answer is still exactly `re`'s, for Python
    strings and for Arrow's (as `coerce` types text)."""
    values = pd.Series(TEXTS, index=range(100, 100 + len(TEXTS)), dtype=dtype)
    got = rules._regex(values, pattern)
    search = re.compile(pattern).search
    assert got.tolist() == [search(t) is None for t in TEXTS]
    assert got.index.equals(values.index)
    twin = rules._re2_twin(pattern)
    if twin is not None:  # what RE2 matches, `re` matches: RE2 is only ever a shortcut
        found = pc.match_substring_regex(pa.array(TEXTS), twin).to_pylist()
        assert all(search(t) for t, hit in zip(TEXTS, found, strict=True) if hit)


def test_a_contract_id_pattern_is_matched_by_re2_first():
    """The shortcut is taken on this Python (it reads `re`'s private parse tree, and would
    fall back to `re` alone, slower but right, if that changed)."""
    for dtype in (object, pd.ArrowDtype(pa.string())):
        texts = pd.Series(["C123456789", "C12", "x"], dtype=dtype)
        assert rules._re2_matches(texts, r"^C\d{9}$").tolist() == [True, False, False]


def test_only_patterns_re2_matches_no_wider_get_a_twin():
    assert rules._re2_twin(r"^C\d{9}$") == r"^\x{43}(?:[\d]){9,9}$"
    assert rules._re2_twin(r"a{,2}") == r"(?:\x{61}){0,2}"
    for pattern in (r"\bx", r"[^\d]", r"\D", r"\S+", r"(?i)x", r"(?m)^x", r"(a)\1", r"(?=a)"):
        assert rules._re2_twin(pattern) is None, pattern
    assert rules._re2_twin(r"a{1001}") is None  # beyond RE2's repeat limit


def test_regex_rule_on_values_that_are_not_text_falls_back_to_re():
    values = pd.Series([12, "C123456789", 3.5], dtype=object)
    assert rules._regex(values, r"^C\d{9}$").tolist() == [True, False, True]
    # bytes are not text to `re` (it searches "b'...'"), whatever Arrow would make of them
    assert rules._regex(pd.Series([b"abc", "abc"]), "^abc").tolist() == [True, False]
    assert rules._regex(pd.Series(["\ud800x", "x"]), "x").tolist() == [False, False]


def test_text_is_typed_as_arrow_strings_and_judged_by_arrow():
    """`coerce` keeps text in Arrow (null for a blank or a null token); the in-set rule then
    compares only with the allowed values that are text, as Python's `isin` would (a value
    "1" is not the number 1), rather than failing on a mixed list."""
    from ray_app.data.contract import ColumnSpec
    from ray_app.data.ingest import _coerce_text, _trimmed

    raw = pd.Series([" basic", "premium", None, "basic ", "NA", "1"], dtype=object)
    spec = ColumnSpec(type="category", allowed=["basic", "premium"], null_values=["NA"])
    values, bad = _coerce_text(raw, _trimmed(raw), spec)
    assert values.dtype == pd.ArrowDtype(pa.string()) and not bad.any()
    assert values.tolist() == ["basic", "premium", pd.NA, "basic", pd.NA, "1"]
    judged = rules._in_set(values.dropna(), value_set=["basic", 1])
    assert judged.tolist() == [False, True, False, True]  # (`broken` leaves nulls out)
