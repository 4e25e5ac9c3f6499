"""The contract's expectations evaluated on a typed batch as vectorised masks.

The contract compiles to Great Expectations expectations (`Contract.checks`), and reports name
every check by its GX type. Running GX's own engine on each batch was the largest cost of
validation and batch scoring (profiled at 1M rows: 5 µs a row, plus about 5 s in every worker
to import GX and build the suite, against 0.3 µs a row for these masks). The contract emits
five simple column predicates, so each is evaluated here with GX's pandas semantics: a
column-map check skips nulls, a regex is a search (`str.contains`), a pair check skips a row
missing either value (`ignore_row_if="either_value_is_missing"`, as the contract compiles
it). `tests/test_rules.py` checks every type against GX itself.
"""

from __future__ import annotations

import re
import re._constants as sre
import re._parser
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ray_app.data.contract import Check
from ray_app.data.ingest import is_arrow_text

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
REGEX = "expect_column_values_to_match_regex"
GREATER = "expect_column_pair_values_a_to_be_greater_than_b"
EQUAL = "expect_column_pair_values_to_be_equal"


def _between(values: pd.Series, min_value=None, max_value=None, **_) -> pd.Series:
    outside = pd.Series(False, index=values.index)
    if min_value is not None:
        outside |= values < min_value
    if max_value is not None:
        outside |= values > max_value
    return outside


def _in_set(values: pd.Series, value_set: list, **_) -> pd.Series:
    if is_arrow_text(values):  # only text can be one of Arrow strings (`is_in` wants one type)
        value_set = [v for v in value_set if isinstance(v, str)]
    return ~values.isin(value_set)


def _regex(values: pd.Series, regex: str, **_) -> pd.Series:
    """`str.contains` (Python's `re`, as GX), with Arrow's RE2 engine first where the pattern
    has an `_re2_twin`: a value RE2 matches is good, and only the others are searched by `re`
    (0.06 µs a value, not 0.2, when most are good)."""
    vouched = _re2_matches(values, regex)
    doubted = np.ones(len(values), dtype=bool) if vouched is None else ~vouched
    search = re.compile(regex).search
    bad = np.zeros(len(values), dtype=bool)
    bad[doubted] = [search(str(v)) is None for v in values[doubted].tolist()]
    return pd.Series(bad, index=values.index)


def _re2_matches(values: pd.Series, regex: str) -> np.ndarray | None:
    """Which values RE2 matches with the pattern's twin; None where it has none, a value is not
    text, or RE2 will not compile the twin."""
    if (twin := _re2_twin(regex)) is None:
        return None
    text = is_arrow_text(values)
    if not text and pd.api.types.infer_dtype(values, skipna=False) != "string":  # bytes pass
        return None
    try:
        texts = pa.array(values) if text else pa.array(values.to_numpy(), pa.string())
        found = pc.match_substring_regex(texts, twin)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeError):
        return None
    return found.fill_null(False).to_numpy(zero_copy_only=False)


# How the parts of a pattern are written for RE2, where RE2 matches no more than Python's `re`
# does: its \d \w \s are ASCII, `re`'s Unicode; its `$` is the end, `re`'s also before a final
# newline. The negations (\D, [^\d]) would match more, so they have no twin.
_RE2_CLASSES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_SPACE: r"\s"}
_RE2_ANCHORS = {
    sre.AT_BEGINNING: "^",
    sre.AT_BEGINNING_STRING: "^",
    sre.AT_END: "$",
    sre.AT_END_STRING: "$",
}
RE2_MAX_REPEAT = 1000


class _NoTwin(Exception):
    """A part of a pattern RE2 cannot match as narrowly as `re`."""


@lru_cache(maxsize=64)
def _re2_twin(regex: str) -> str | None:
    """`regex` rewritten for RE2 so that every value it matches, `re` matches too; None where
    a part has no such form (flags, back-references, look-arounds, word boundaries, negated
    classes of digits, words or spaces). Built from `re`'s own parse of the pattern, every
    character written as a code point, so no difference in the two syntaxes (`{,n}`) can
    change what is matched."""
    try:
        tree = re._parser.parse(regex)
        if tree.state.flags & ~re.UNICODE:
            return None
        return _re2_sequence(tree)
    # `re`'s parser is private: a parse tree of another shape (a later Python) leaves `re`
    # alone, slower but right (tests/test_rules.py checks the shortcut is taken here)
    except (_NoTwin, re.error, TypeError, ValueError, AttributeError):
        return None


def _re2_sequence(items: Iterable[tuple[Any, Any]]) -> str:  # a part of `re`'s parse tree
    out = []
    for op, arg in items:
        if op is sre.LITERAL:
            out.append(_re2_char(arg))
        elif op is sre.NOT_LITERAL:
            out.append(f"[^{_re2_char(arg)}]")
        elif op is sre.ANY:  # neither matches a newline
            out.append(".")
        elif op is sre.IN:
            out.append(_re2_class(arg))
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # greedy or lazy: the same values match
            low, high, sub = arg
            if max(low, 0 if high is sre.MAXREPEAT else high) > RE2_MAX_REPEAT:
                raise _NoTwin
            bound = f"{low}," if high is sre.MAXREPEAT else f"{low},{high}"
            out.append(f"(?:{_re2_sequence(sub)}){{{bound}}}")
        elif op is sre.SUBPATTERN and not (arg[1] or arg[2]):  # a group, without flags
            out.append(f"(?:{_re2_sequence(arg[3])})")
        elif op is sre.BRANCH:
            out.append(f"(?:{'|'.join(_re2_sequence(alt) for alt in arg[1])})")
        elif op is sre.AT and arg in _RE2_ANCHORS:
            out.append(_RE2_ANCHORS[arg])
        else:
            raise _NoTwin
    return "".join(out)


def _re2_class(items: list[tuple[Any, Any]]) -> str:
    negated = bool(items) and items[0][0] is sre.NEGATE
    parts = []
    for op, arg in items[negated:]:
        if op is sre.LITERAL:
            parts.append(_re2_char(arg))
        elif op is sre.RANGE:
            parts.append(f"{_re2_char(arg[0])}-{_re2_char(arg[1])}")
        elif op is sre.CATEGORY and arg in _RE2_CLASSES and not negated:
            parts.append(_RE2_CLASSES[arg])
        else:
            raise _NoTwin
    return f"[{'^' if negated else ''}{''.join(parts)}]"


def _re2_char(code: int) -> str:
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate: no UTF-8 text holds one
        raise _NoTwin
    return f"\\x{{{code:x}}}"


def _greater(a: pd.Series, b: pd.Series, or_equal: bool = False, **_) -> pd.Series:
    return ~((a >= b) if or_equal else (a > b))


def _equal(a: pd.Series, b: pd.Series, **_) -> pd.Series:
    return ~(a == b)


COLUMN_CHECKS: dict[str, Callable[..., pd.Series]] = {
    BETWEEN: _between,
    IN_SET: _in_set,
    REGEX: _regex,
}
PAIR_CHECKS: dict[str, Callable[..., pd.Series]] = {GREATER: _greater, EQUAL: _equal}


def broken(
    typed: pd.DataFrame, check: Check, nulls: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Which rows of a typed batch break `check` (a boolean mask). `nulls` keeps each column's
    null mask for the next check of the same batch: finding the nulls of a text column takes
    half as long as an in-set rule on it (24 ns a value)."""
    nulls = {} if nulls is None else nulls

    def missing(column: str) -> np.ndarray:
        if column not in nulls:
            nulls[column] = typed[column].isna().to_numpy(bool)
        return nulls[column]

    kwargs = dict(check.kwargs)
    if check.type in PAIR_CHECKS:
        a, b = kwargs.pop("column_A"), kwargs.pop("column_B")
        if kwargs.pop("ignore_row_if") != "either_value_is_missing":
            raise ValueError(f"no vectorised form for {check.type} with {check.kwargs}")
        judged = ~missing(a) & ~missing(b)
        found = PAIR_CHECKS[check.type](typed[a], typed[b], **kwargs)
        return judged & found.to_numpy(bool, na_value=False)  # NA where `judged` is False
    column = kwargs.pop("column")
    if check.type == NOT_NULL:
        return missing(column).copy()  # the kept mask stays as it is
    if check.type not in COLUMN_CHECKS:
        raise ValueError(f"no vectorised form for expectation {check.type!r}")
    judge, values = COLUMN_CHECKS[check.type], typed[column]
    present = ~missing(column)
    if present.all():  # the usual column: judged without a copy of it
        return judge(values, **kwargs).to_numpy(bool)
    bad = np.zeros(len(values), dtype=bool)
    bad[present] = judge(values[present], **kwargs).to_numpy(bool)
    return bad


def examples(typed: pd.DataFrame, check: Check, mask: np.ndarray, limit: int) -> list[str]:
    """The first `limit` offending values as reports show them; a pair shows both columns."""
    rows = np.flatnonzero(mask)[:limit]
    if check.type in PAIR_CHECKS:
        a, b = check.kwargs["column_A"], check.kwargs["column_B"]
        return [f"{a}={_shown(typed[a].iloc[i])}, {b}={_shown(typed[b].iloc[i])}" for i in rows]
    return [_shown(v) for v in typed[check.kwargs["column"]].iloc[rows]]


def _shown(value: Any) -> str:
    """A typed value as a report shows it; a missing text value (Arrow's null) as `None`,
    not pandas' `<NA>`."""
    return "None" if value is pd.NA else str(value)
