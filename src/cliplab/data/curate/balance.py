"""MetaCLIP's balancing (Xu et al. 2023), the alternative to the hard per-query cap: with
``count_q`` the number of pool texts matching query q, a text matching queries Q is kept
with probability 1 - prod over q in Q of (1 - min(1, t / count_q)). Rare queries keep all
their texts, frequent ones about t. The draw is a hash of the seed and the text's id, so
the decision is the same in any engine, process or order."""

from __future__ import annotations

from collections.abc import Sequence

from cliplab.data.stream import stable_seed

__all__ = ["balance_draw", "balance_probability", "balance_reason"]


def balance_probability(found: Sequence[int], counts: Sequence[int], t: int) -> float:
    """MetaCLIP's keep probability for a pair matching queries ``found``: 1 - prod over them
    of (1 - min(1, t / count_q)), where ``count_q`` is how many pool pairs match query q."""
    miss = 1.0
    for q in found:
        miss *= 1.0 - min(1.0, t / max(counts[q], 1))
    return 1.0 - miss


def balance_draw(seed: int, record_id: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the pair's id (any engine, any order)."""
    return stable_seed("balance", seed, record_id) / float(1 << 63)


def balance_reason(
    record_id: str, found: Sequence[int], counts: Sequence[int], t: int, seed: int
) -> str | None:
    """None when a checked pair is kept by balancing, else ``"balance"``."""
    keep = balance_draw(seed, record_id) < balance_probability(found, counts, t)
    return None if keep else "balance"
