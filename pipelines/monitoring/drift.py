"""Feature drift between a reference and a current sample: population stability index (PSI).

Pure functions over numpy/pandas; callers read the data (see ``drift_job.py``).

Binning. Bin edges are the quantiles of the reference at ``0, 1/bins, ..., 1`` (numpy's linear
interpolation). Bins are left-closed, ``[e_i, e_i+1)``, and values outside the reference range go
to the first or last bin, so every current value lands somewhere.

Ties and discrete features. When many reference values are equal (counts with many zeros, 0/1
flags, a value capped at a maximum) several quantiles coincide; only the unique edges are kept, so
there are fewer bins than ``bins``. A value that repeats as a quantile holds at least about one
bin's share of the reference, and it gets a bin of its own: without that, a 0/1 feature would have
the single bin ``[0, 1]`` and no drift could ever show, and a mass at the maximum would share its
bin with the values just below it. Isolating such a value can leave bins between two
neighbouring integers that are empty on both sides; those add exactly 0 to the PSI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

DriftStatus = Literal["ok", "warn", "drift", "skipped"]
# What psi accepts: arrays, Series, or plain sequences that may hold None.
Values = npt.ArrayLike | Sequence[float | None]

# pandas' inferred kinds of an object column that hold only numbers, booleans or nulls.
_NUMERIC_OBJECT_KINDS = {"integer", "floating", "mixed-integer-float", "boolean", "empty"}


@dataclass(frozen=True)
class DriftThresholds:
    """PSI levels: ``psi >= warn`` is "warn", ``psi >= alert`` is "drift"."""

    warn: float = 0.1
    alert: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.warn <= self.alert:
            raise ValueError(
                f"drift thresholds need 0 <= warn <= alert (got warn={self.warn}, "
                f"alert={self.alert})"
            )

    def status(self, psi_value: float) -> DriftStatus:
        """The status of one PSI value."""
        if psi_value >= self.alert:
            return "drift"
        if psi_value >= self.warn:
            return "warn"
        return "ok"


DEFAULT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature. Rows and means count only the non-null values the PSI used."""

    feature: str
    psi: float
    status: DriftStatus
    reference_rows: int
    current_rows: int
    reference_mean: float | None
    current_mean: float | None
    note: str = ""


def psi(
    reference: Values,
    current: Values,
    bins: int = 10,
    epsilon: float = 1e-4,
) -> float:
    """Population stability index of ``current`` against ``reference``.

    ``PSI = sum((c - r) * ln(c / r))`` over the bins described in the module docstring, where
    ``r`` and ``c`` are the shares of each side in a bin, floored at ``epsilon`` (not
    renormalised) so that an empty bin costs a large but finite amount. NaN and None are dropped
    first; identical samples give exactly 0.0.

    Raises:
        ValueError: a side has no values, contains infinities, the reference is constant (a
            single bin cannot show drift), ``bins < 2`` or ``epsilon <= 0``.
    """
    if bins < 2:
        raise ValueError(f"psi needs bins >= 2 (got {bins})")
    if epsilon <= 0:
        raise ValueError(f"psi needs epsilon > 0 (got {epsilon})")
    ref = _finite_values(reference, "reference")
    cur = _finite_values(current, "current")
    starts = _bin_starts(ref, bins)
    if starts.size == 0:
        raise ValueError(
            f"psi: reference is constant ({float(ref[0])!r}), so it has a single bin and cannot "
            "show drift; skip the feature instead"
        )
    ref_share = _shares(ref, starts, epsilon)
    cur_share = _shares(cur, starts, epsilon)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[str],
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    bins: int = 10,
) -> list[FeatureDrift]:
    """One result per feature, in the order given.

    Features must be numeric columns (booleans count as 0/1; nullable dtypes are fine, nulls are
    dropped). A feature with no values on either side, with infinities, or constant in the
    reference is "skipped" with PSI 0.0 and the reason in ``note``; otherwise ``note`` reports
    dropped nulls, since a surge of nulls is a change PSI itself does not see.

    Raises:
        ValueError: a feature is missing from either frame or is not numeric.
        TypeError: ``features`` is a single string rather than a sequence of names.
    """
    if isinstance(features, str):
        raise TypeError(f"features must be a sequence of column names, not the string {features!r}")
    results = []
    for feature in features:
        ref = _column_values(reference, feature, "reference")
        cur = _column_values(current, feature, "current")
        results.append(_one_feature(feature, ref, cur, thresholds, bins))
    return results


def _one_feature(
    feature: str,
    reference: np.ndarray,
    current: np.ndarray,
    thresholds: DriftThresholds,
    bins: int,
) -> FeatureDrift:
    ref = reference[~np.isnan(reference)]
    cur = current[~np.isnan(current)]

    def result(psi_value: float, status: DriftStatus, note: str) -> FeatureDrift:
        return FeatureDrift(
            feature=feature,
            psi=psi_value,
            status=status,
            reference_rows=int(ref.size),
            current_rows=int(cur.size),
            reference_mean=_mean(ref),
            current_mean=_mean(cur),
            note=note,
        )

    empty = [side for side, values in (("reference", ref), ("current", cur)) if values.size == 0]
    if empty:
        return result(0.0, "skipped", f"no data in {' or '.join(empty)}")
    infinite = [
        f"{side} ({int(np.isinf(values).sum())})"
        for side, values in (("reference", ref), ("current", cur))
        if np.isinf(values).any()
    ]
    if infinite:
        return result(0.0, "skipped", f"infinite values in {', '.join(infinite)}")
    if np.all(ref == ref[0]):
        return result(0.0, "skipped", f"constant in reference (value {float(ref[0])!r})")
    value = psi(ref, cur, bins=bins)
    nulls = (reference.size - ref.size, current.size - cur.size)
    note = f"nulls dropped: reference {nulls[0]}, current {nulls[1]}" if any(nulls) else ""
    return result(value, thresholds.status(value), note)


def _finite_values(values: Values, side: str) -> np.ndarray:
    """``values`` as floats without NaN/None; raises on empty or infinite input."""
    raw = np.asarray(values, dtype=float).ravel()
    array: np.ndarray = raw[~np.isnan(raw)]
    if array.size == 0:
        raise ValueError(f"psi: {side} has no values (after dropping NaN/None)")
    if np.isinf(array).any():
        raise ValueError(
            f"psi: {side} has {int(np.isinf(array).sum())} infinite values; drop or clip them first"
        )
    return array


def _bin_starts(reference: np.ndarray, bins: int) -> np.ndarray:
    """Sorted left edges of bins 1..k (bin 0 starts at -inf, the last ends at +inf)."""
    quantiles = np.quantile(reference, np.linspace(0.0, 1.0, bins + 1))
    edges, repeats = np.unique(quantiles, return_counts=True)
    lowest, highest = edges[0], edges[-1]
    masses = edges[repeats > 1]
    # A repeated quantile v gets the bin [v, next float after v): it starts a bin unless it is the
    # lowest edge (bin 0 already holds it) and ends one unless it is the highest (the last bin
    # holds everything from v up).
    starts = np.concatenate(
        [
            edges[1:-1],
            masses[masses > lowest],
            np.nextafter(masses[masses < highest], np.inf),
        ]
    )
    return np.unique(starts)


def _shares(values: np.ndarray, starts: np.ndarray, epsilon: float) -> np.ndarray:
    """Share of ``values`` in each bin, floored at ``epsilon``."""
    index = np.searchsorted(starts, values, side="right")
    counts = np.bincount(index, minlength=starts.size + 1)
    shares: np.ndarray = np.maximum(counts / values.size, epsilon)
    return shares


def _column_values(frame: pd.DataFrame, feature: str, side: str) -> np.ndarray:
    """A numeric or boolean column as floats, nulls as NaN."""
    if feature not in frame.columns:
        known = ", ".join(map(str, frame.columns)) or "none"
        raise ValueError(f"{side} has no column {feature!r} (columns: {known})")
    column = frame[feature]
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_complex_dtype(column)
    if not numeric and column.dtype == object:
        numeric = pd.api.types.infer_dtype(column, skipna=True) in _NUMERIC_OBJECT_KINDS
    if not numeric:
        raise ValueError(
            f"feature {feature!r} in {side} has dtype {column.dtype}; drift needs numeric or "
            "boolean columns"
        )
    return np.asarray(column.to_numpy(dtype=float, na_value=np.nan), dtype=float)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None
