"""PSI and per-feature drift: exact values on tiny samples, statuses on realistic ones."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring.drift import DriftThresholds, FeatureDrift, feature_drift, psi

FEATURES = ["latency", "clicks", "spend", "is_mobile"]
EPS = 1e-4


def features(seed: int, n: int = 5000) -> pd.DataFrame:
    """User features of four shapes: normal, counts, zero-heavy continuous, boolean."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "latency": rng.normal(100.0, 15.0, n),
            "clicks": rng.poisson(2.0, n),
            "spend": np.where(rng.random(n) < 0.7, 0.0, rng.lognormal(3.0, 1.0, n)),
            "is_mobile": rng.random(n) < 0.3,
        }
    )


def by_feature(results: list[FeatureDrift]) -> dict[str, FeatureDrift]:
    return {r.feature: r for r in results}


# --- whole-frame behaviour -------------------------------------------------------------------


def test_identical_frames_have_zero_psi_and_ok() -> None:
    reference = features(seed=1)
    results = feature_drift(reference, reference.copy(), FEATURES)

    assert [r.feature for r in results] == FEATURES
    for r in results:
        mean = float(np.mean(reference[r.feature].to_numpy(dtype=float)))
        assert r == FeatureDrift(r.feature, 0.0, "ok", 5000, 5000, mean, mean, "")


def test_same_distribution_other_seed_is_small_and_ok() -> None:
    results = by_feature(feature_drift(features(seed=1), features(seed=2), FEATURES))

    for name in FEATURES:
        assert 0.0 < results[name].psi < 0.02, name
        assert results[name].status == "ok"


@pytest.mark.parametrize(
    ("shifted", "shift"),
    [
        ("latency", lambda s: s + 2 * 15.0),
        ("clicks", lambda s: s * 3),
        ("spend", lambda s: s * 3),
        ("is_mobile", lambda s: ~s),
    ],
)
def test_shift_in_one_feature_is_drift_and_only_that_one(
    shifted: str, shift: Callable[[pd.Series], pd.Series]
) -> None:
    current = features(seed=2)
    current[shifted] = shift(current[shifted])

    results = by_feature(feature_drift(features(seed=1), current, FEATURES))

    assert results[shifted].psi > 0.25
    assert results[shifted].status == "drift"
    assert {n: r.status for n, r in results.items() if n != shifted} == {
        n: "ok" for n in FEATURES if n != shifted
    }


# --- psi on hand-computed examples ---------------------------------------------------------


def test_psi_hand_computed_two_bins() -> None:
    # Reference 1..10, bins=2: the median 5.5 splits it 50/50; current puts 6 of 10 below it.
    value = psi(np.arange(1, 11), [1, 1, 1, 1, 1, 1, 6, 7, 8, 9], bins=2)

    expected = (0.6 - 0.5) * math.log(0.6 / 0.5) + (0.4 - 0.5) * math.log(0.4 / 0.5)
    assert value == pytest.approx(expected, abs=1e-9)
    assert value == pytest.approx(0.1 * math.log(1.5), abs=1e-9)
    assert value == pytest.approx(0.040546510810816, abs=1e-9)


def test_psi_empty_bin_is_floored_at_epsilon() -> None:
    # Nothing above the median in current: its share 0 becomes epsilon.
    value = psi(np.arange(1, 11), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5], bins=2)

    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (EPS - 0.5) * math.log(EPS / 0.5)
    assert value == pytest.approx(expected, abs=1e-9)
    assert psi(np.arange(1, 11), [1] * 10, bins=2, epsilon=1e-2) == pytest.approx(
        0.5 * math.log(2.0) + (1e-2 - 0.5) * math.log(1e-2 / 0.5), abs=1e-9
    )


def test_psi_values_outside_reference_range_go_to_first_and_last_bins() -> None:
    # Far-out values count as the extreme bins: -100 and 0 are "below 5.5", 6 and 1e6 above it.
    assert psi(np.arange(1, 11), [-100, 0, 6, 1e6], bins=2) == 0.0
    assert psi(np.arange(1, 11), [-100, -50, 0, 1e6], bins=2) == pytest.approx(
        (0.75 - 0.5) * math.log(1.5) + (0.25 - 0.5) * math.log(0.5), abs=1e-9
    )


def test_psi_identical_samples_is_exactly_zero() -> None:
    sample = np.random.default_rng(7).normal(size=1000)

    assert psi(sample, sample.copy()) == 0.0
    assert psi(sample, sample[::-1]) == 0.0


def test_psi_drops_nan_and_none() -> None:
    clean = psi(np.arange(1, 11), [1, 1, 1, 1, 1, 1, 6, 7, 8, 9], bins=2)

    with_nulls = psi(
        [1, 2, None, 3, 4, 5, 6, np.nan, 7, 8, 9, 10],
        [1, 1, 1, np.nan, 1, 1, 1, 6, 7, None, 8, 9],
        bins=2,
    )

    assert with_nulls == clean


# --- ties and discrete features ------------------------------------------------------------


def test_psi_boolean_gets_one_bin_per_value() -> None:
    # Unique quantile edges of a 0/1 sample are [0, 1]: one bin unless the masses are isolated.
    reference = np.array([False] * 7 + [True] * 3)
    current = np.array([False] * 3 + [True] * 7)

    expected = (0.3 - 0.7) * math.log(0.3 / 0.7) + (0.7 - 0.3) * math.log(0.7 / 0.3)
    assert psi(reference, current) == pytest.approx(expected, abs=1e-9)
    assert psi(reference, current) == pytest.approx(0.8 * math.log(7 / 3), abs=1e-9)


def test_psi_zero_heavy_counts_collapse_to_fewer_bins() -> None:
    # Quantiles of 8 zeros + [1, 2] at 0, 0.1, ..., 1 are 0 (x8), 0.2, 1.1, 2: the bins are
    # {0}, (0, 0.2), [0.2, 1.1), [1.1, inf) -> reference shares 0.8, 0, 0.1, 0.1.
    reference = [0] * 8 + [1, 2]
    current = [0] * 5 + [1] * 3 + [2] * 2

    expected = (
        (0.5 - 0.8) * math.log(0.5 / 0.8)
        + (0.3 - 0.1) * math.log(0.3 / 0.1)
        + (0.2 - 0.1) * math.log(0.2 / 0.1)
    )
    assert psi(reference, current) == pytest.approx(expected, abs=1e-9)


def test_psi_mass_at_the_maximum_gets_its_own_bin() -> None:
    # A capped feature: 40% at the cap 10. Quantiles (bins=5) are 1, 2.8, 4.6, 7.6, 10, 10; the
    # cap is isolated, so lowering it to 9 moves 40% into the empty bin [7.6, 10).
    reference = [1, 2, 3, 4, 5, 6, 10, 10, 10, 10]
    current = [1, 2, 3, 4, 5, 6, 9, 9, 9, 9]

    expected = 2 * (0.4 - EPS) * math.log(0.4 / EPS)
    assert psi(reference, current, bins=5) == pytest.approx(expected, abs=1e-9)


def test_psi_integer_gaps_between_isolated_values_add_nothing() -> None:
    # Isolating 0, 1 and 2 leaves bins (0, 1) and (1, 2) that integers never fill.
    rng = np.random.default_rng(3)
    reference = rng.poisson(1.0, 2000)
    current = reference[::-1].copy()

    assert psi(reference, current) == 0.0
    # Only the 2 -> 1 move counts: both values have their own bin.
    moved = np.where(reference == 2, 1, reference)
    r1, r2 = np.mean(reference == 1), np.mean(reference == 2)
    expected = r2 * math.log((r1 + r2) / r1) + (EPS - r2) * math.log(EPS / r2)
    assert psi(reference, moved) == pytest.approx(expected, abs=1e-9)


# --- psi argument errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "current", "bins", "epsilon", "message"),
    [
        ([1.0, 2.0], [1.0], 1, EPS, r"psi needs bins >= 2 \(got 1\)"),
        ([1.0, 2.0], [1.0], 10, 0.0, r"psi needs epsilon > 0 \(got 0.0\)"),
        ([np.nan, None], [1.0], 10, EPS, "psi: reference has no values"),
        ([1.0, 2.0], [], 10, EPS, "psi: current has no values"),
        ([1.0, np.inf, -np.inf], [1.0], 10, EPS, "psi: reference has 2 infinite values"),
        ([3.0, 3.0, np.nan], [1.0, 5.0], 10, EPS, r"psi: reference is constant \(3.0\)"),
    ],
)
def test_psi_rejects_what_it_cannot_measure(
    reference: list[float | None], current: list[float], bins: int, epsilon: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        psi(reference, current, bins=bins, epsilon=epsilon)


# --- feature_drift edge cases --------------------------------------------------------------


def test_constant_reference_is_skipped() -> None:
    reference = pd.DataFrame({"x": [3, 3, 3, 3]})
    current = pd.DataFrame({"x": [3, 5, 7]})

    assert feature_drift(reference, current, ["x"]) == [
        FeatureDrift("x", 0.0, "skipped", 4, 3, 3.0, 5.0, "constant in reference (value 3.0)")
    ]


def test_empty_side_is_skipped() -> None:
    reference = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0]})
    current = pd.DataFrame({"x": [np.nan, np.nan], "y": [1.0, 4.0]})
    empty = pd.DataFrame({"x": pd.Series([], dtype=float), "y": pd.Series([], dtype=float)})

    assert feature_drift(reference, current, ["x"]) == [
        FeatureDrift("x", 0.0, "skipped", 3, 0, 2.0, None, "no data in current")
    ]
    assert feature_drift(empty, current, ["x", "y"]) == [
        FeatureDrift("x", 0.0, "skipped", 0, 0, None, None, "no data in reference or current"),
        FeatureDrift("y", 0.0, "skipped", 0, 2, None, 2.5, "no data in reference"),
    ]


def test_infinite_values_are_skipped() -> None:
    reference = pd.DataFrame({"x": [1.0, 2.0, np.inf, 3.0]})
    current = pd.DataFrame({"x": [1.0, -np.inf, 2.0]})

    [result] = feature_drift(reference, current, ["x"])

    assert (result.status, result.psi, result.note) == (
        "skipped",
        0.0,
        "infinite values in reference (1), current (1)",
    )
    assert (result.reference_rows, result.current_rows) == (4, 3)


def test_nulls_are_dropped_and_reported() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    reference = pd.DataFrame({"x": [*values, np.nan], "n": pd.array([*range(10), None], "Int64")})
    current = pd.DataFrame(
        {"x": [None, *values, None, None], "n": pd.array([*range(10), None, None, None], "Int64")}
    )

    assert feature_drift(reference, current, ["x", "n"]) == [
        FeatureDrift("x", 0.0, "ok", 10, 10, 5.5, 5.5, "nulls dropped: reference 1, current 3"),
        FeatureDrift("n", 0.0, "ok", 10, 10, 4.5, 4.5, "nulls dropped: reference 1, current 3"),
    ]


@pytest.mark.parametrize(
    ("reference", "current", "note"),
    [
        (pd.Series([False] * 7 + [True] * 3), pd.Series([False] * 3 + [True] * 7), ""),
        (
            pd.Series([False] * 7 + [True] * 3 + [None], dtype="boolean"),
            pd.Series([False] * 3 + [True] * 7, dtype="boolean"),
            "nulls dropped: reference 1, current 0",
        ),
        (
            pd.Series([False] * 7 + [True] * 3, dtype=object),
            pd.Series([None, *[False] * 3, *[True] * 7], dtype=object),
            "nulls dropped: reference 0, current 1",
        ),
    ],
    ids=["bool", "nullable-boolean", "object"],
)
def test_booleans_count_as_zero_and_one(
    reference: pd.Series, current: pd.Series, note: str
) -> None:
    [result] = feature_drift(reference.to_frame("flag"), current.to_frame("flag"), ["flag"])

    assert result.psi == pytest.approx(0.8 * math.log(7 / 3), abs=1e-9)
    assert result == FeatureDrift("flag", result.psi, "drift", 10, 10, 0.3, 0.7, note)


def test_bins_are_passed_through() -> None:
    reference = pd.DataFrame({"x": np.arange(1, 11)})
    current = pd.DataFrame({"x": [1, 1, 1, 1, 1, 1, 6, 7, 8, 9]})

    [result] = feature_drift(reference, current, ["x"], bins=2)

    assert result.psi == pytest.approx(0.1 * math.log(1.5), abs=1e-9)
    assert result.status == "ok"


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        (
            pd.DataFrame({"y": [1]}),
            pd.DataFrame({"x": [1]}),
            r"reference has no column 'x' \(columns: y\)",
        ),
        (pd.DataFrame({"x": [1]}), pd.DataFrame(), r"current has no column 'x' \(columns: none\)"),
        (
            pd.DataFrame({"x": ["a", "b"]}),
            pd.DataFrame({"x": [1]}),
            "feature 'x' in reference has dtype object; drift needs numeric or boolean columns",
        ),
        (
            pd.DataFrame({"x": [1]}),
            pd.DataFrame({"x": pd.to_datetime(["2026-01-01"])}),
            r"feature 'x' in current has dtype datetime64\[ns\]",
        ),
    ],
)
def test_feature_drift_rejects_missing_and_non_numeric_columns(
    reference: pd.DataFrame, current: pd.DataFrame, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        feature_drift(reference, current, ["x"])


def test_features_must_not_be_a_bare_string() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0]})

    with pytest.raises(TypeError, match="not the string 'x'"):
        feature_drift(frame, frame, "x")


# --- thresholds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (0.0, "ok"),
        (math.nextafter(0.1, 0.0), "ok"),
        (0.1, "warn"),
        (math.nextafter(0.25, 0.0), "warn"),
        (0.25, "drift"),
        (3.0, "drift"),
    ],
)
def test_default_threshold_boundaries(value: float, status: str) -> None:
    assert DriftThresholds().status(value) == status


def test_feature_drift_applies_thresholds_inclusively() -> None:
    reference = pd.DataFrame({"x": np.arange(1, 11)})
    current = pd.DataFrame({"x": [1, 1, 1, 1, 1, 1, 6, 7, 8, 9]})
    value = psi(reference["x"], current["x"], bins=2)
    assert value == pytest.approx(0.1 * math.log(1.5), abs=1e-9)

    def status(thresholds: DriftThresholds) -> str:
        return feature_drift(reference, current, ["x"], thresholds, bins=2)[0].status

    assert status(DriftThresholds(warn=math.nextafter(value, 1.0), alert=1.0)) == "ok"
    assert status(DriftThresholds(warn=value, alert=1.0)) == "warn"
    assert status(DriftThresholds(warn=0.0, alert=value)) == "drift"


@pytest.mark.parametrize(("warn", "alert"), [(0.3, 0.2), (-0.1, 0.2)])
def test_thresholds_must_be_ordered(warn: float, alert: float) -> None:
    with pytest.raises(ValueError, match="drift thresholds need 0 <= warn <= alert"):
        DriftThresholds(warn=warn, alert=alert)
