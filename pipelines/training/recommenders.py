"""Recommenders trained on silver events: a popularity baseline and item-item collaborative
filtering.

Both are plain pandas/numpy/scipy with no Spark, so a fitted model can be served from an MLflow
pyfunc, and both are deterministic: no sampling, and every tie is broken by ``item_id``.

Events are a pandas DataFrame with ``user_id``, ``item_id``, ``event_type`` and ``event_ts``
(UTC-naive ``datetime64[ns]``); items are a DataFrame with ``item_id`` and ``category``. Only the
event types in ``WEIGHTS`` count as interactions (``search`` has no item and is ignored).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

WEIGHTS = {"page_view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
"""Implicit-feedback strength of each event type."""
RELEVANT_EVENTS = frozenset({"click", "add_to_cart", "purchase"})
"""Event types in the test period that make an item relevant to a user (a view alone does not)."""
MODEL_FORMAT = "item-item/v1"
SCORE_DECIMALS = 12
POPULARITY_WINDOW = pd.Timedelta(days=7)
"""How far back popularity looks by default: recent enough to follow trends."""


def time_split(
    events: pd.DataFrame, test_fraction: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Split at the event time ``T`` below which ``1 - test_fraction`` of the events fall.

    ``T`` is the ``1 - test_fraction`` quantile of ``event_ts`` taken as an actual event time
    (``interpolation="lower"``); train is ``event_ts < T`` and test is ``event_ts >= T``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be within (0, 1), got {test_fraction}")
    if events.empty:
        raise ValueError("cannot split an empty events DataFrame")
    split_at = pd.Timestamp(events["event_ts"].quantile(1.0 - test_fraction, interpolation="lower"))
    before = events["event_ts"] < split_at
    return (
        events[before].reset_index(drop=True),
        events[~before].reset_index(drop=True),
        split_at,
    )


def weighted_interactions(events: pd.DataFrame) -> pd.DataFrame:
    """Events of a weighted type with an item, plus their ``weight`` column."""
    kept = events[events["event_type"].isin(list(WEIGHTS)) & events["item_id"].notna()]
    return kept.assign(weight=kept["event_type"].map(WEIGHTS).astype(float))


def relevant_items(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, set[str]]:
    """Per user, the items clicked, carted or bought in test that the user never touched in train.

    Any train event with the item (a page view too) makes it already known, so only new
    discoveries are left to predict. Users with no such item are absent.
    """
    seen = {
        (user, item)
        for user, item in zip(train["user_id"], train["item_id"], strict=True)
        if isinstance(item, str)
    }
    engaged = test[test["event_type"].isin(list(RELEVANT_EVENTS)) & test["item_id"].notna()]
    relevant: dict[str, set[str]] = defaultdict(set)
    for user, item in zip(engaged["user_id"], engaged["item_id"], strict=True):
        if (user, item) not in seen:
            relevant[user].add(item)
    return {user: relevant[user] for user in sorted(relevant)}


@dataclass
class PopularityModel:
    """Recent popularity: the always-reported baseline and the cold-start fallback."""

    ranked: list[str]
    """Every known item, by popularity descending, ties by item_id."""
    by_category: dict[str, list[str]]
    """Per category, its items in the order of ``ranked``."""

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        items: pd.DataFrame,
        *,
        as_of: pd.Timestamp,
        window: pd.Timedelta = POPULARITY_WINDOW,
    ) -> PopularityModel:
        """Popularity = summed ``WEIGHTS`` of the events in ``(as_of - window, as_of]``.

        The ranking covers the catalog in ``items`` plus any item seen in the events; items with
        no event in the window come last, by item_id.
        """
        if window <= pd.Timedelta(0):
            raise ValueError(f"window must be positive, got {window}")
        weighted = weighted_interactions(interactions)
        ts = weighted["event_ts"]
        recent = weighted[(ts > as_of - window) & (ts <= as_of)]
        score = recent.groupby("item_id")["weight"].sum().to_dict()
        catalog = items.drop_duplicates("item_id")
        universe = set(catalog["item_id"]) | set(weighted["item_id"])
        ranked = sorted(universe, key=lambda item: (-score.get(item, 0.0), item))
        position = {item: n for n, item in enumerate(ranked)}
        by_category: dict[str, list[str]] = {}
        for category, group in catalog.groupby("category", sort=True):
            by_category[str(category)] = sorted(group["item_id"], key=position.__getitem__)
        return cls(ranked=ranked, by_category=by_category)

    def recommend(
        self, k: int, exclude: AbstractSet[str] = frozenset(), categories: Sequence[str] = ()
    ) -> list[str]:
        """Up to ``k`` items: the given categories' lists in order first, then the global list.

        ``categories`` are a user's preferred categories, best first; unknown ones are skipped.
        Never returns an excluded item or the same item twice.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        chosen: list[str] = []
        taken = set(exclude)
        for ranking in [*(self.by_category.get(c, []) for c in categories), self.ranked]:
            for item in ranking:
                if len(chosen) == k:
                    return chosen
                if item not in taken:
                    chosen.append(item)
                    taken.add(item)
        return chosen

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"ranked": list(self.ranked), "by_category": dict(self.by_category)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PopularityModel:
        """Inverse of ``to_dict``."""
        return cls(
            ranked=list(data["ranked"]),
            by_category={c: list(items) for c, items in data["by_category"].items()},
        )


@dataclass
class ItemItemModel:
    """Item-item collaborative filtering: cosine similarity of items over weighted feedback.

    A user's affinity to an item is ``log1p`` of the summed ``WEIGHTS`` of their events on it:
    the log keeps a user who viewed an item twenty times from dominating its similarities, while a
    purchase still counts for more than a glance. Similarities and scores are compared rounded to
    ``SCORE_DECIMALS``, so values equal up to float noise tie and fall to the item_id order.
    """

    similar: dict[str, list[tuple[str, float]]]
    """Per item, its top neighbours with cosine similarity > 0, best first, ties by item_id."""
    user_history: dict[str, dict[str, float]]
    """Per user, item -> log1p-scaled weight, from the training events."""
    item_category: dict[str, str]
    popularity: PopularityModel
    min_history: int

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        items: pd.DataFrame,
        *,
        as_of: pd.Timestamp,
        neighbours: int = 50,
        min_history: int = 3,
    ) -> ItemItemModel:
        """Fit on the events of ``train`` at or before ``as_of``; popularity is as of ``as_of``."""
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        if min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {min_history}")
        weighted = weighted_interactions(train)
        weighted = weighted[weighted["event_ts"] <= as_of]
        summed = weighted.groupby(["user_id", "item_id"], sort=True)["weight"].sum()
        affinity = np.log1p(summed.to_numpy(dtype=float))
        user_ids = summed.index.get_level_values("user_id")
        item_ids = summed.index.get_level_values("item_id")

        user_history: dict[str, dict[str, float]] = defaultdict(dict)
        for user, item, value in zip(user_ids, item_ids, affinity, strict=True):
            user_history[user][item] = float(value)

        return cls(
            similar=_top_neighbours(user_ids, item_ids, affinity, neighbours),
            user_history=dict(user_history),
            item_category={
                str(i): str(c)
                for i, c in zip(items["item_id"], items["category"], strict=True)
                if isinstance(c, str)
            },
            popularity=PopularityModel.fit(train, items, as_of=as_of),
            min_history=min_history,
        )

    def top_categories(self, user_id: str) -> list[str]:
        """The categories of a user's history, by summed affinity descending, ties by name."""
        totals: dict[str, float] = defaultdict(float)
        for item, weight in self.user_history.get(user_id, {}).items():
            category = self.item_category.get(item)
            if category is not None:
                totals[category] += weight
        return sorted(totals, key=lambda c: (-totals[c], c))

    def recommend(self, user_id: str, k: int) -> tuple[list[str], bool]:
        """``k`` items the user has not interacted with, and whether the user was a cold start.

        A user with fewer than ``min_history`` distinct items (or none) gets popularity, first
        from their own categories. Otherwise ``score(i) = sum_j w(u, j) * sim(j, i)`` over the
        history, top ``k`` by score, topped up from category-first popularity when the
        neighbourhoods run out. Fewer than ``k`` only when the catalog itself runs out.
        """
        scored, cold = self.recommend_scored(user_id, k)
        return [item for item, _ in scored], cold

    def recommend_scored(self, user_id: str, k: int) -> tuple[list[tuple[str, float | None]], bool]:
        """``recommend`` with each item's score (None for popularity fill-ins)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        history = self.user_history.get(user_id, {})
        categories = self.top_categories(user_id)
        if len(history) < self.min_history:
            popular = self.popularity.recommend(k, exclude=history.keys(), categories=categories)
            return [(item, None) for item in popular], True
        scores: dict[str, float] = defaultdict(float)
        for item, weight in history.items():
            for other, similarity in self.similar.get(item, []):
                if other not in history:
                    scores[other] += weight * similarity
        chosen = sorted(scores, key=lambda i: (-round(scores[i], SCORE_DECIMALS), i))[:k]
        scored: list[tuple[str, float | None]] = [
            (item, round(scores[item], SCORE_DECIMALS)) for item in chosen
        ]
        if len(chosen) < k:
            fill = self.popularity.recommend(
                k - len(chosen), exclude=history.keys() | set(chosen), categories=categories
            )
            scored += [(item, None) for item in fill]
        return scored, False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, for the MLflow model artifact."""
        return {
            "format": MODEL_FORMAT,
            "min_history": self.min_history,
            "similar": {i: [[j, s] for j, s in pairs] for i, pairs in self.similar.items()},
            "user_history": self.user_history,
            "item_category": self.item_category,
            "popularity": self.popularity.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemItemModel:
        """Inverse of ``to_dict``."""
        if data.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"item-item model format {data.get('format')!r} is not {MODEL_FORMAT!r}; "
                "refit the model with this version of pipelines.training.recommenders"
            )
        return cls(
            similar={
                i: [(str(j), float(s)) for j, s in pairs] for i, pairs in data["similar"].items()
            },
            user_history={
                u: {i: float(w) for i, w in hist.items()}
                for u, hist in data["user_history"].items()
            },
            item_category=dict(data["item_category"]),
            popularity=PopularityModel.from_dict(data["popularity"]),
            min_history=int(data["min_history"]),
        )


def _top_neighbours(
    user_ids: pd.Index, item_ids: pd.Index, affinity: np.ndarray, neighbours: int
) -> dict[str, list[tuple[str, float]]]:
    """Cosine similarity between the item columns of the user x item matrix, top-N per item."""
    users, user_index = np.unique(user_ids.to_numpy(dtype=object), return_inverse=True)
    items, item_index = np.unique(item_ids.to_numpy(dtype=object), return_inverse=True)
    matrix = sparse.csr_matrix((affinity, (user_index, item_index)), shape=(len(users), len(items)))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())
    normalised = matrix @ sparse.diags(1.0 / np.where(norms > 0, norms, 1.0))
    similarity = (normalised.T @ normalised).tocsr()
    similar: dict[str, list[tuple[str, float]]] = {}
    for row, item in enumerate(items):
        start, end = similarity.indptr[row], similarity.indptr[row + 1]
        cols, values = similarity.indices[start:end], similarity.data[start:end]
        keep = (cols != row) & (values > 0)
        cols, values = cols[keep], np.round(values[keep], SCORE_DECIMALS)
        # Columns follow the sorted item ids, so the column index breaks ties by item_id.
        order = np.lexsort((cols, -values))[:neighbours]
        similar[str(item)] = [(str(items[cols[n]]), float(values[n])) for n in order]
    return similar
