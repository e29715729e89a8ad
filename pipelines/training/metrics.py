"""Offline ranking metrics for top-k recommendations with binary relevance.

Every metric looks at the first ``k`` recommended items only. An item counts as a hit the first
time it appears, so a list that repeats a relevant item gains nothing from the repeat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet


def _hit_ranks(recommended: Sequence[str], relevant: AbstractSet[str], k: int) -> list[int]:
    """1-based ranks within the top ``k`` where a relevant item first appears."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: set[str] = set()
    ranks = []
    for rank, item in enumerate(recommended[:k], start=1):
        if item in relevant and item not in seen:
            ranks.append(rank)
        seen.add(item)
    return ranks


def precision_at_k(recommended: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """Hits in the top ``k`` over ``k`` (a list shorter than ``k`` is not forgiven)."""
    return len(_hit_ranks(recommended, relevant, k)) / k


def recall_at_k(recommended: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """Hits in the top ``k`` over the number of relevant items; 0.0 when none is relevant."""
    hits = _hit_ranks(recommended, relevant, k)
    return len(hits) / len(relevant) if relevant else 0.0


def ndcg_at_k(recommended: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """DCG with a ``1 / log2(rank + 1)`` discount over the DCG of ``min(k, |relevant|)`` hits."""
    hits = _hit_ranks(recommended, relevant, k)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank in hits)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def average_precision_at_k(recommended: Sequence[str], relevant: AbstractSet[str], k: int) -> float:
    """Sum of precision at each hit's rank over ``min(k, |relevant|)``, so a perfect list is 1.0."""
    hits = _hit_ranks(recommended, relevant, k)
    if not relevant:
        return 0.0
    return sum(n / rank for n, rank in enumerate(hits, start=1)) / min(k, len(relevant))


def evaluate(
    recommendations: Mapping[str, Sequence[str]],
    relevant: Mapping[str, AbstractSet[str]],
    k: int,
    catalog_size: int,
) -> dict[str, float]:
    """Mean precision, recall, NDCG and MAP at ``k`` over the users with a relevant item.

    A user in ``relevant`` with no recommendations counts as an empty list. ``coverage`` is the
    share of the catalog that appears in the top ``k`` of any list in ``recommendations`` (every
    user served, not only the evaluated ones); ``users`` is the number of users averaged over.
    """
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be >= 1, got {catalog_size}")
    users = sorted(user for user, items in relevant.items() if items)
    totals = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    for user in users:
        recommended = recommendations.get(user, ())
        truth = relevant[user]
        totals["precision"] += precision_at_k(recommended, truth, k)
        totals["recall"] += recall_at_k(recommended, truth, k)
        totals["ndcg"] += ndcg_at_k(recommended, truth, k)
        totals["map"] += average_precision_at_k(recommended, truth, k)
    n = len(users)
    result = {f"{name}@{k}": total / n if n else 0.0 for name, total in totals.items()}
    distinct = {item for items in recommendations.values() for item in items[:k]}
    result["coverage"] = len(distinct) / catalog_size
    result["users"] = n
    return result
