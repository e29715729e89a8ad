from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import pandas as pd
import pytest

from pipelines.contracts import event_time_ms
from pipelines.synthetic.clickstream import ClickstreamGenerator
from pipelines.training.metrics import (
    average_precision_at_k,
    evaluate,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from pipelines.training.recommenders import (
    ItemItemModel,
    PopularityModel,
    relevant_items,
    time_split,
)

AS_OF = pd.Timestamp("2026-01-08 00:00:00")
W = math.log1p(8.0)  # a single purchase, log1p-scaled
V = math.log1p(1.0)  # a single page view, log1p-scaled


def events(*rows: tuple[str, str | None, str, str]) -> pd.DataFrame:
    """Silver-shaped events from ``(user_id, item_id, event_type, event_ts)`` rows."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "event_ts": pd.to_datetime([r[3] for r in rows]),
        }
    )


def catalog(**categories: str) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(categories), "category": list(categories.values())})


# --- metrics -------------------------------------------------------------------------------------


def test_ndcg_with_hits_at_ranks_one_and_three() -> None:
    dcg = 1.0 + 1.0 / math.log2(4)
    ideal = 1.0 + 1.0 / math.log2(3)
    assert ndcg_at_k(["a", "b", "c", "d"], {"a", "c"}, 4) == pytest.approx(dcg / ideal, abs=1e-15)
    assert ndcg_at_k(["a", "b", "c", "d"], {"a", "c"}, 4) == pytest.approx(0.9197207891481876)
    # The ideal has min(k, |relevant|) hits: with k=1 one hit at rank 1 is perfect.
    assert ndcg_at_k(["a", "b"], {"a", "x", "y"}, 1) == 1.0
    assert ndcg_at_k(["b", "a"], {"a"}, 1) == 0.0
    assert ndcg_at_k(["a"], set(), 3) == 0.0


def test_average_precision_is_normalised_by_min_k_and_relevant() -> None:
    # Hits at ranks 1 and 3: precisions 1 and 2/3.
    assert average_precision_at_k(["a", "b", "c"], {"a", "c"}, 3) == pytest.approx(5 / 6)
    assert average_precision_at_k(["a", "b", "c"], {"a", "c", "x", "y", "z"}, 3) == pytest.approx(
        5 / 9
    )
    assert average_precision_at_k(["b", "a"], {"a"}, 2) == 0.5
    assert average_precision_at_k(["a"], set(), 2) == 0.0


def test_precision_and_recall() -> None:
    # A list shorter than k is not forgiven.
    assert precision_at_k(["a", "b", "c"], {"a", "c"}, 5) == 0.4
    assert precision_at_k(["a", "b", "c"], {"a", "c"}, 2) == 0.5
    assert recall_at_k(["a", "b", "c"], {"a", "c", "x", "y", "z"}, 3) == 0.4
    assert recall_at_k(["a", "b"], set(), 2) == 0.0
    # A repeated relevant item is one hit.
    assert precision_at_k(["a", "a", "b"], {"a"}, 3) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "a"], {"a", "b"}, 2) == 0.5
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        precision_at_k(["a"], {"a"}, 0)


def test_evaluate_averages_over_users_with_relevant_items() -> None:
    recommendations = {"u1": ["a", "b"], "u2": ["c", "d"], "u9": ["e", "a", "f"]}
    relevant = {"u1": {"a"}, "u2": {"x"}, "u3": {"b"}, "u4": set()}

    result = evaluate(recommendations, relevant, k=2, catalog_size=10)

    # u1 is perfect but for precision 1/2; u2 misses; u3 has no list (an empty one); u4 has nothing
    # relevant and is left out. Coverage counts the top 2 of every list: a, b, c, d, e (not f).
    assert result == pytest.approx(
        {
            "precision@2": 0.5 / 3,
            "recall@2": 1 / 3,
            "ndcg@2": 1 / 3,
            "map@2": 1 / 3,
            "coverage": 0.5,
            "users": 3,
        }
    )
    assert evaluate({}, {"u1": set()}, k=5, catalog_size=4) == {
        "precision@5": 0.0,
        "recall@5": 0.0,
        "ndcg@5": 0.0,
        "map@5": 0.0,
        "coverage": 0.0,
        "users": 0,
    }


# --- splits and relevance ------------------------------------------------------------------------


def test_time_split_puts_the_quantile_instant_in_test() -> None:
    minutes = [0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9]
    frame = events(*((f"u{m}", "a", "click", f"2026-01-01 00:{m:02d}") for m in minutes))

    train, test, split_at = time_split(frame, test_fraction=0.2)

    # The lower 0.8 quantile of 11 times is the 9th (index 8): minute 7, and both events at it go
    # to test.
    assert split_at == pd.Timestamp("2026-01-01 00:07")
    assert train["event_ts"].dt.minute.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(test["event_ts"].dt.minute) == [7, 7, 8, 9]

    shuffled = frame.sample(frac=1.0, random_state=3)
    train2, test2, split_at2 = time_split(shuffled, test_fraction=0.2)
    assert split_at2 == split_at
    assert sorted(train2["user_id"]) == sorted(train["user_id"])
    assert sorted(test2["user_id"]) == sorted(test["user_id"])
    with pytest.raises(ValueError, match="test_fraction must be within"):
        time_split(frame, test_fraction=1.0)


def test_relevant_items_are_new_engagements_only() -> None:
    train = events(
        ("u1", "A", "page_view", "2026-01-01"),
        ("u1", "B", "click", "2026-01-01"),
        ("u2", None, "search", "2026-01-01"),
    )
    test = events(
        ("u1", "A", "click", "2026-01-02"),  # seen in train (a view is enough)
        ("u1", "C", "purchase", "2026-01-02"),
        ("u1", "D", "page_view", "2026-01-02"),  # a view alone is not relevance
        ("u2", "F", "add_to_cart", "2026-01-02"),
        ("u2", "G", "click", "2026-01-02"),
        ("u3", "E", "page_view", "2026-01-02"),
        ("u4", None, "search", "2026-01-02"),
    )

    assert relevant_items(train, test) == {"u1": {"C"}, "u2": {"F", "G"}}


# --- popularity ----------------------------------------------------------------------------------


def test_popularity_window_is_open_at_the_start_and_closed_at_as_of() -> None:
    interactions = events(
        ("u1", "edge", "purchase", "2026-01-01 00:00:00"),  # exactly as_of - window: out
        ("u1", "inside", "click", "2026-01-01 00:00:01"),
        ("u2", "now", "page_view", "2026-01-08 00:00:00"),  # exactly as_of: in
        ("u2", "future", "purchase", "2026-01-08 00:00:01"),  # after as_of: out
        ("u3", None, "search", "2026-01-05 00:00:00"),
    )
    items = catalog(edge="x", inside="x", now="y", future="y", zzz="z")

    model = PopularityModel.fit(interactions, items, as_of=AS_OF, window=pd.Timedelta(days=7))

    assert model.ranked == ["inside", "now", "edge", "future", "zzz"]
    assert model.by_category == {"x": ["inside", "edge"], "y": ["now", "future"], "z": ["zzz"]}


def popularity_model() -> PopularityModel:
    interactions = events(
        ("u1", "c", "purchase", "2026-01-07"),  # 8
        ("u1", "a", "add_to_cart", "2026-01-07"),  # 4
        ("u2", "b", "click", "2026-01-06"),  # 2 + 2 = 4, ties with a
        ("u3", "b", "click", "2026-01-06"),
        ("u3", "d", "page_view", "2026-01-05"),  # 1
    )
    return PopularityModel.fit(
        interactions, catalog(c="x", a="y", b="x", d="y", e="z"), as_of=AS_OF
    )


def test_popularity_orders_by_weight_then_item_id() -> None:
    model = popularity_model()

    assert model.ranked == ["c", "a", "b", "d", "e"]
    assert model.by_category == {"x": ["c", "b"], "y": ["a", "d"], "z": ["e"]}
    assert model.recommend(10) == ["c", "a", "b", "d", "e"]
    assert model.recommend(2) == ["c", "a"]
    assert model.recommend(0) == []


def test_popularity_fills_categories_in_order_then_global_without_excluded() -> None:
    model = popularity_model()

    assert model.recommend(3, categories=["y"]) == ["a", "d", "c"]
    assert model.recommend(4, exclude={"a"}, categories=["y", "x"]) == ["d", "c", "b", "e"]
    assert model.recommend(2, categories=["unknown", "z"]) == ["e", "c"]
    assert model.recommend(10, exclude={"c", "e"}, categories=["x"]) == ["b", "a", "d"]


# --- item-item -----------------------------------------------------------------------------------


def tiny_world() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Buyers of A also buy B (u1, u2); A and C meet once (u3); C-D and D-E chain on."""
    interactions = events(
        ("u1", "A", "purchase", "2026-01-02"),
        ("u1", "B", "purchase", "2026-01-02"),
        ("u2", "A", "purchase", "2026-01-03"),
        ("u2", "B", "purchase", "2026-01-03"),
        ("u3", "A", "purchase", "2026-01-04"),
        ("u3", "C", "purchase", "2026-01-04"),
        ("u4", "C", "purchase", "2026-01-05"),
        ("u4", "D", "purchase", "2026-01-05"),
        ("u5", "D", "purchase", "2026-01-06"),
        ("u5", "E", "purchase", "2026-01-06"),
        ("t", "A", "page_view", "2026-01-07"),
        ("t", None, "search", "2026-01-07"),
        ("t", "E", "purchase", "2026-01-09"),  # after as_of: not part of the model
    )
    # Popularity as of AS_OF: A 25, B 16, C 16, D 16, E 8.
    return interactions, catalog(A="x", B="x", C="y", D="y", E="z")


def test_item_item_similarities_are_cosine_of_log_weights() -> None:
    model = ItemItemModel.fit(*tiny_world(), as_of=AS_OF, min_history=1)

    norm_a = math.sqrt(3 * W * W + V * V)  # u1, u2, u3 bought A; t viewed it
    assert [item for item, _ in model.similar["A"]] == ["B", "C"]
    assert model.similar["A"][0][1] == pytest.approx(2 * W * W / (norm_a * math.sqrt(2) * W))
    assert model.similar["A"][1][1] == pytest.approx(W * W / (norm_a * math.sqrt(2) * W))
    assert model.similar["C"][0] == ("D", 0.5)
    assert model.user_history["t"] == {"A": pytest.approx(V)}
    assert model.user_history["u5"] == {"D": pytest.approx(W), "E": pytest.approx(W)}
    assert model.popularity.ranked == ["A", "B", "C", "D", "E"]
    assert ItemItemModel.fit(*tiny_world(), as_of=AS_OF, neighbours=1).similar["A"] == [
        ("B", model.similar["A"][0][1])
    ]


def test_item_item_recommends_co_bought_item_first() -> None:
    model = ItemItemModel.fit(*tiny_world(), as_of=AS_OF, min_history=1)

    # B (twice A's co-buyers) before C; nothing else neighbours A, so D and E come from popularity.
    assert model.recommend("t", 4) == (["B", "C", "D", "E"], False)
    assert model.recommend("t", 1) == (["B"], False)
    # Only four items are left once A is excluded.
    assert model.recommend("t", 10) == (["B", "C", "D", "E"], False)


def test_item_item_excludes_history() -> None:
    model = ItemItemModel.fit(*tiny_world(), as_of=AS_OF, min_history=1)

    # From A: B (and C, owned); from C: D (and A, owned); E tops up from popularity.
    assert model.recommend("u3", 3) == (["B", "D", "E"], False)
    assert model.recommend("u1", 3) == (["C", "D", "E"], False)


def test_item_item_breaks_score_ties_by_item_id() -> None:
    interactions = events(
        ("u1", "X", "purchase", "2026-01-02"),
        ("u1", "Z", "purchase", "2026-01-02"),
        ("u1", "Y", "purchase", "2026-01-02"),
        ("u2", "X", "purchase", "2026-01-03"),
    )
    items = catalog(X="a", Y="a", Z="a")
    model = ItemItemModel.fit(interactions, items, as_of=AS_OF, neighbours=1, min_history=1)

    # Y and Z are both 1/sqrt(2) from X: the one neighbour kept is Y.
    assert model.similar == {
        "X": [("Y", pytest.approx(1 / math.sqrt(2)))],
        "Y": [("Z", 1.0)],
        "Z": [("Y", 1.0)],
    }
    wider = ItemItemModel.fit(interactions, items, as_of=AS_OF, min_history=1)
    assert wider.similar["X"] == [
        ("Y", pytest.approx(1 / math.sqrt(2))),
        ("Z", pytest.approx(1 / math.sqrt(2))),
    ]
    assert wider.recommend("u2", 1) == (["Y"], False)


def test_cold_start_uses_category_first_popularity() -> None:
    model = ItemItemModel.fit(*tiny_world(), as_of=AS_OF)  # min_history=3: everyone is cold

    # u5 owns D (y) and E (z), tied by weight so y first: C, then the global A, B.
    assert model.recommend("u5", 3) == (["C", "A", "B"], True)
    assert model.recommend("t", 3) == (["B", "C", "D"], True)
    assert model.recommend("nobody", 3) == (["A", "B", "C"], True)
    assert model.recommend("nobody", 0) == ([], True)

    at_two = ItemItemModel.fit(*tiny_world(), as_of=AS_OF, min_history=2)
    assert at_two.recommend("u3", 3) == (["B", "D", "E"], False)
    assert at_two.recommend("t", 3) == (["B", "C", "D"], True)


def test_round_trip_through_json_gives_identical_recommendations() -> None:
    model = ItemItemModel.fit(*tiny_world(), as_of=AS_OF, min_history=2)

    restored = ItemItemModel.from_dict(json.loads(json.dumps(model.to_dict())))

    assert restored == model
    for user in ["u1", "u2", "u3", "u4", "u5", "t", "nobody"]:
        assert restored.recommend(user, 4) == model.recommend(user, 4)
    with pytest.raises(ValueError, match="item-item model format 'other/v9' is not"):
        ItemItemModel.from_dict({**model.to_dict(), "format": "other/v9"})


# --- learnability --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Silver-shaped events and the item catalog from the synthetic clickstream."""
    generator = ClickstreamGenerator(
        users=400, items=150, seed=5, end=datetime(2026, 11, 26, tzinfo=UTC), days=10
    )
    decoded = [json.loads(e.value) for e in generator.events(40_000) if e.kind == "good"]
    frame = pd.DataFrame(
        {
            "user_id": [e["user_id"] for e in decoded],
            "item_id": [e.get("item_id") for e in decoded],
            "event_type": [e["event_type"] for e in decoded],
            "event_ts": pd.to_datetime([event_time_ms(e["timestamp"]) for e in decoded], unit="ms"),
        }
    )
    categories = {
        e["item_id"]: e["properties"]["category"]
        for e in decoded
        if "item_id" in e and "category" in e.get("properties", {})
    }
    return frame, catalog(**dict(sorted(categories.items())))


def test_item_item_beats_popularity_on_synthetic_clickstream(
    synthetic: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, items = synthetic
    train, test, split_at = time_split(frame)
    relevant = relevant_items(train, test)
    model = ItemItemModel.fit(train, items, as_of=split_at)

    collaborative = {user: model.recommend(user, 10)[0] for user in relevant}
    popular = {
        user: model.popularity.recommend(10, exclude=model.user_history.get(user, {}).keys())
        for user in relevant
    }
    ours = evaluate(collaborative, relevant, k=10, catalog_size=len(items))
    baseline = evaluate(popular, relevant, k=10, catalog_size=len(items))

    assert ours["users"] == baseline["users"] == len(relevant)
    assert all(len(recommended) == 10 for recommended in collaborative.values())
    # Measured: NDCG@10 0.399 item-item vs 0.114 popularity (3.5x) over 187 users; recall@10
    # 0.56 vs 0.19. Popularity restricted to the user's own categories first reaches 0.386, so
    # most of the lift is the latent category taste the co-occurrences pick up.
    assert ours["ndcg@10"] >= 3.0 * baseline["ndcg@10"]
    assert ours["recall@10"] >= 2.5 * baseline["recall@10"]
    assert ours["coverage"] > 0.9 > baseline["coverage"]


def test_fitting_is_deterministic(synthetic: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame, items = synthetic
    rows = list(frame.itertuples(index=False))
    random.Random(1).shuffle(rows)
    shuffled = pd.DataFrame(rows, columns=frame.columns)
    train, _, split_at = time_split(frame)
    train2, _, split_at2 = time_split(shuffled)

    assert split_at2 == split_at
    assert ItemItemModel.fit(train2, items, as_of=split_at) == ItemItemModel.fit(
        train, items, as_of=split_at
    )
