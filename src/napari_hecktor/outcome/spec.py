"""Which column of a clinical table plays which part: the outcome spec.

The HECKTOR 2025 table is the default (:func:`default_spec`); any other table is
described by a small YAML file::

    name: my cohort                  # optional, shown in reports
    id: PatientID
    time: {column: RFS, unit: days}  # or just "time: RFS" (unit "days")
    event: {column: Relapse, value: 1}
    numeric: [Age, Performance Status]
    categorical: [Gender, M-stage]
    hpv: {column: HPV Status, positive: 1, negative: 0}   # optional classifier target
    center: CenterID                 # optional: leave-centre-out CV
    split: {column: Set, train: train, test: test}       # optional fixed split
    features: auto                   # optional: "auto", a list of column-name prefixes, or none
    imputer: median                  # or "iterative" (round-robin BayesianRidge, 10 rounds)

``features`` picks image-derived columns (radiomics, PET metrics, deep scores) joined by
id: ``auto`` takes every numeric column that the spec does not name otherwise; a list
takes the columns whose names start with one of the prefixes. The HPV column is the
target of the HPV classifier and never a covariate; the centre and split columns are
never covariates either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_hecktor.errors import HecktorInputError

_ALLOWED_KEYS = (
    "name",
    "id",
    "time",
    "event",
    "numeric",
    "categorical",
    "hpv",
    "center",
    "split",
    "features",
    "imputer",
)


@dataclass(frozen=True)
class OutcomeSpec:
    """Column roles of an outcome table (see the module docstring for the YAML form)."""

    id: str
    time: str
    event: str
    event_value: Any = 1
    time_unit: str = "days"
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    hpv: str | None = None
    hpv_positive: tuple[Any, ...] = (1,)
    hpv_negative: tuple[Any, ...] = (0,)
    center: str | None = None
    split: str | None = None
    split_train: tuple[Any, ...] = ("train",)
    split_test: tuple[Any, ...] = ("test",)
    features: str | tuple[str, ...] | None = None
    imputer: str = "median"
    name: str = "custom"
    feature_columns: tuple[str, ...] = field(default=())  # resolved against a table

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (plain types), with the resolved feature columns."""
        d = asdict(self)
        out: dict[str, Any] = {
            "name": d["name"],
            "id": self.id,
            "time": {"column": self.time, "unit": self.time_unit},
            "event": {"column": self.event, "value": _plain(self.event_value)},
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
        }
        if self.hpv:
            out["hpv"] = {
                "column": self.hpv,
                "positive": [_plain(v) for v in self.hpv_positive],
                "negative": [_plain(v) for v in self.hpv_negative],
            }
        if self.center:
            out["center"] = self.center
        if self.split:
            out["split"] = {
                "column": self.split,
                "train": [_plain(v) for v in self.split_train],
                "test": [_plain(v) for v in self.split_test],
            }
        if self.features is not None:
            out["features"] = (
                self.features if isinstance(self.features, str) else list(self.features)
            )
        out["imputer"] = self.imputer
        out["feature_columns"] = list(self.feature_columns)
        return out

    @property
    def role_columns(self) -> tuple[str, ...]:
        """Columns that are never covariates: id, time, event, HPV target, centre, split."""
        cols = [self.id, self.time, self.event, self.hpv, self.center, self.split]
        return tuple(c for c in cols if c)

    @property
    def covariates(self) -> tuple[str, ...]:
        """Clinical covariates (numeric then categorical)."""
        return tuple(self.numeric) + tuple(self.categorical)

    def with_features(self, columns: tuple[str, ...]) -> OutcomeSpec:
        return replace(self, feature_columns=tuple(columns))

    # ------------------------------------------------------------------ table checks
    def resolve(self, table: pd.DataFrame) -> OutcomeSpec:
        """Check that every named column exists and resolve ``features`` to columns."""
        named = list(self.role_columns) + list(self.covariates)
        missing = [c for c in named if c not in table.columns]
        if missing:
            raise HecktorInputError(
                f"The table has no column {_quote(missing)} named in the outcome spec "
                f"'{self.name}' (its columns: {_quote(list(table.columns)[:20])}"
                f"{', ...' if table.shape[1] > 20 else ''})."
            )
        return self.with_features(tuple(self.match_features(table.columns, table)))

    def match_features(self, columns, table: pd.DataFrame | None = None) -> list[str]:
        """Columns of ``columns`` that the ``features`` rule selects."""
        if self.features is None:
            return []
        taken = set(self.role_columns) | set(self.covariates)
        cols = [str(c) for c in columns if str(c) not in taken]
        if isinstance(self.features, str):  # "auto"
            if table is None:
                return cols
            return [c for c in cols if _is_numeric_column(table[c])]
        return [c for c in cols if any(c.startswith(p) for p in self.features)]


def _is_numeric_column(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return True
    converted = pd.to_numeric(series, errors="coerce")
    return bool(converted.notna().sum() == series.notna().sum())


def _quote(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


def default_spec() -> OutcomeSpec:
    """The HECKTOR 2025 table (see :mod:`napari_hecktor.data.clinical`)."""
    return OutcomeSpec(
        name="HECKTOR 2025",
        id="PatientID",
        time="RFS",
        time_unit="days",
        event="Relapse",
        event_value=1,
        numeric=("Age", "Tobacco Consumption", "Alcohol Consumption", "Performance Status"),
        categorical=("Gender", "Treatment", "M-stage"),
        hpv="HPV Status",
        hpv_positive=(1,),
        hpv_negative=(0,),
        center="CenterID",
        features="auto",
        imputer="median",
    )


def spec_from_dict(data: Mapping[str, Any], *, source: str = "outcome spec") -> OutcomeSpec:
    """Build a spec from its YAML/JSON mapping; unknown keys and missing roles are refused."""
    if not isinstance(data, Mapping):
        raise HecktorInputError(f"The {source} must be a mapping of keys (id, time, event...).")
    unknown = [k for k in data if k not in _ALLOWED_KEYS and k != "feature_columns"]
    if unknown:
        raise HecktorInputError(
            f"Unknown key {_quote(unknown)} in the {source} (allowed: {', '.join(_ALLOWED_KEYS)})."
        )
    for key in ("id", "time", "event"):
        if key not in data or data[key] in (None, ""):
            raise HecktorInputError(f"The {source} must name the '{key}' column.")

    def column_of(key: str, value: Any, extra: tuple[str, ...] = ()) -> tuple[str, dict]:
        if isinstance(value, str):
            return value, {}
        if isinstance(value, Mapping) and "column" in value:
            bad = [k for k in value if k not in ("column", *extra)]
            if bad:
                raise HecktorInputError(
                    f"Unknown key {_quote(bad)} under '{key}' in the {source} "
                    f"(allowed: column{', ' if extra else ''}{', '.join(extra)})."
                )
            return str(value["column"]), dict(value)
        raise HecktorInputError(
            f"'{key}' in the {source} must be a column name or a mapping with 'column'."
        )

    time_col, time_d = column_of("time", data["time"], ("unit",))
    event_col, event_d = column_of("event", data["event"], ("value",))
    kwargs: dict[str, Any] = {
        "name": str(data.get("name", "custom")),
        "id": str(data["id"]),
        "time": time_col,
        "time_unit": str(time_d.get("unit", "days")),
        "event": event_col,
        "event_value": event_d.get("value", 1),
        "numeric": tuple(str(c) for c in _as_tuple(data.get("numeric"))),
        "categorical": tuple(str(c) for c in _as_tuple(data.get("categorical"))),
        "imputer": str(data.get("imputer", "median")),
    }
    if kwargs["imputer"] not in ("median", "iterative"):
        raise HecktorInputError(
            f"'imputer' in the {source} must be 'median' or 'iterative', got '{kwargs['imputer']}'."
        )
    if data.get("hpv") is not None:
        hpv_col, hpv_d = column_of("hpv", data["hpv"], ("positive", "negative"))
        kwargs["hpv"] = hpv_col
        kwargs["hpv_positive"] = _as_tuple(hpv_d.get("positive", 1))
        kwargs["hpv_negative"] = _as_tuple(hpv_d.get("negative", 0))
    if data.get("center") is not None:
        kwargs["center"] = column_of("center", data["center"])[0]
    if data.get("split") is not None:
        split_col, split_d = column_of("split", data["split"], ("train", "test"))
        kwargs["split"] = split_col
        kwargs["split_train"] = _as_tuple(split_d.get("train", "train"))
        kwargs["split_test"] = _as_tuple(split_d.get("test", "test"))
    feats = data.get("features")
    if feats is not None and feats is not False:
        if isinstance(feats, str):
            if feats != "auto":
                feats = (feats,)  # a single prefix
        else:
            feats = tuple(str(p) for p in _as_tuple(feats))
        kwargs["features"] = feats
    if "feature_columns" in data:
        kwargs["feature_columns"] = tuple(str(c) for c in data["feature_columns"] or ())
    spec = OutcomeSpec(**kwargs)
    overlap = set(spec.numeric) & set(spec.categorical)
    if overlap:
        raise HecktorInputError(
            f"Column {_quote(sorted(overlap))} is listed as both numeric and categorical in "
            f"the {source}."
        )
    roles = set(spec.role_columns)
    clash = [c for c in spec.covariates if c in roles]
    if clash:
        raise HecktorInputError(
            f"Column {_quote(clash)} cannot be both a covariate and the id/time/event/HPV/"
            f"centre/split column in the {source}."
        )
    return spec


def load_spec(spec: str | Path | Mapping[str, Any] | OutcomeSpec | None) -> OutcomeSpec:
    """A spec from a YAML file, a mapping, an :class:`OutcomeSpec`, or None (HECKTOR 2025)."""
    if spec is None:
        return default_spec()
    if isinstance(spec, OutcomeSpec):
        return spec
    if isinstance(spec, Mapping):
        return spec_from_dict(spec)
    import yaml

    path = Path(spec)
    if not path.is_file():
        raise HecktorInputError(f"Outcome spec file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise HecktorInputError(
            f"Outcome spec {path} is not valid YAML: {exc}".replace("\n", " ")
        ) from None
    return spec_from_dict(data, source=f"outcome spec {path.name}")


# ----------------------------------------------------------------------------- tables


def read_table(table: str | Path | pd.DataFrame, id_col: str | None = None) -> pd.DataFrame:
    """Read a CSV (ids kept as text) or copy a DataFrame."""
    if isinstance(table, pd.DataFrame):
        return table.copy()
    path = Path(table)
    if not path.is_file():
        raise HecktorInputError(f"Table {path} does not exist.")
    try:
        df = pd.read_csv(path, dtype={id_col: str} if id_col else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HecktorInputError(f"Cannot read {path} as CSV: {exc}".replace("\n", " ")) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def join_tables(
    clinical_csv: str | Path | pd.DataFrame,
    features_csv: str | Path | pd.DataFrame,
    id_col: str = "PatientID",
) -> pd.DataFrame:
    """Clinical rows joined (left) with a features table by ``id_col``.

    Patients without a features row get missing features (imputed later); a duplicated
    id in the features table or a feature column that repeats a clinical column is
    refused.
    """
    clin = read_table(clinical_csv, id_col)
    feats = read_table(features_csv, id_col)
    for name, df in (("clinical", clin), ("features", feats)):
        if id_col not in df.columns:
            raise HecktorInputError(f"The {name} table has no id column '{id_col}'.")
    clin[id_col] = clin[id_col].astype(str)
    feats[id_col] = feats[id_col].astype(str)
    dup = feats[id_col][feats[id_col].duplicated()].unique()
    if len(dup):
        raise HecktorInputError(
            f"The features table lists patient {_quote(dup[:5])} more than once."
        )
    clash = [c for c in feats.columns if c != id_col and c in clin.columns]
    if clash:
        raise HecktorInputError(
            f"The features table repeats clinical column {_quote(clash[:5])}; rename it."
        )
    return clin.merge(feats, on=id_col, how="left", validate="many_to_one")


def _matches(values: pd.Series, accepted: tuple[Any, ...]) -> np.ndarray:
    """Element-wise: does the cell equal one of ``accepted`` (numbers compared as numbers)?"""
    out = np.zeros(len(values), dtype=bool)
    as_num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    as_str = values.astype(str).str.strip().str.lower().to_numpy()
    for acc in accepted:
        if isinstance(acc, bool):
            acc = int(acc)
        try:
            num = float(acc)
        except (TypeError, ValueError):
            num = math.nan
        if not math.isnan(num):
            out |= as_num == num
        out |= as_str == str(acc).strip().lower()
    return out & values.notna().to_numpy()


def survival_target(table: pd.DataFrame, spec: OutcomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(event bool, time float) arrays; rows with a missing or non-positive time get NaN time."""
    time = pd.to_numeric(table[spec.time], errors="coerce").to_numpy(dtype=float)
    time = np.where(time > 0, time, np.nan)
    event = _matches(table[spec.event], (spec.event_value,))
    missing_event = table[spec.event].isna().to_numpy()
    time = np.where(missing_event, np.nan, time)
    return event, time


def hpv_target(table: pd.DataFrame, spec: OutcomeSpec) -> np.ndarray:
    """HPV label per row: 1.0 positive, 0.0 negative, NaN unknown."""
    if not spec.hpv:
        return np.full(len(table), np.nan)
    pos = _matches(table[spec.hpv], spec.hpv_positive)
    neg = _matches(table[spec.hpv], spec.hpv_negative) & ~pos
    return np.where(pos, 1.0, np.where(neg, 0.0, np.nan))


def split_masks(table: pd.DataFrame, spec: OutcomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row masks: all rows are training rows without a split column."""
    if not spec.split:
        return np.ones(len(table), dtype=bool), np.zeros(len(table), dtype=bool)
    train = _matches(table[spec.split], spec.split_train)
    test = _matches(table[spec.split], spec.split_test)
    return train, test & ~train
