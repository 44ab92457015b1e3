"""Deterministic, nested N-shot transfer standards and the split manifest.

Seeds come from stable hashes (sha256 of the parts), never Python's ``hash()``, so a split is
the same in every process and on every machine. A repetition r is (outer split r % K, standards
draw r // K): the task's K outer splits (test folds, ``ctbench.tasks``) are visited in turn, so
the spread over repetitions includes the test set's variation. Standards are chosen among whole
samples of the outer split's calibration pool; the first N of a repetition's ordering are its N
standards, so the 5 standards of repetition r are the first 5 of its 10. No two repetitions use
the same standard set for any N of the card's shot grid (redrawn until distinct).

Strategies:
- ``kennard_stone``: draw 0 is Kennard-Stone on the pool's source spectra; a later draw runs
  Kennard-Stone on a seeded random subsample (``subsample`` of the pool, 80 % by default), so
  repetitions differ while keeping the representative choice.
- ``random``: a seeded random ordering of the pool.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np


def stable_seed(*parts: Any) -> int:
    """A 32-bit seed from the parts' text, identical across processes and machines."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def hash_indices(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def kennard_stone_order(X: np.ndarray, n: int | None = None) -> np.ndarray:
    """Kennard-Stone ordering of the rows of X (Euclidean): first the two farthest points, then
    repeatedly the point farthest from those already chosen."""
    X = np.asarray(X, dtype=float)
    m = X.shape[0]
    n = m if n is None else min(n, m)
    if m == 0 or n == 0:
        return np.zeros(0, dtype=int)
    sq = (X * X).sum(axis=1)
    D = np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
    if m == 1:
        return np.array([0])
    i, j = np.unravel_index(np.argmax(D), D.shape)
    order = [int(min(i, j)), int(max(i, j))]
    mind = np.minimum(D[order[0]], D[order[1]])
    mind[order] = -1.0
    while len(order) < n:
        k = int(np.argmax(mind))
        order.append(k)
        mind = np.minimum(mind, D[k])
        mind[order] = -1.0
    return np.asarray(order[:n], dtype=int)


def _group_means(X: np.ndarray, groups: np.ndarray, uniq: np.ndarray) -> np.ndarray:
    return np.stack([X[groups == g].mean(axis=0) for g in uniq])


def standards_order(
    X_source_pool: np.ndarray,
    pool_groups_per_row: np.ndarray,
    pool_groups: np.ndarray,
    strategy: str,
    seed_parts: tuple[Any, ...],
    rep: int,
    subsample: float = 0.8,
) -> np.ndarray:
    """The ordering of the pool's samples (ids) for one repetition; standards are its prefix."""
    rng = np.random.default_rng(stable_seed("standards", *seed_parts, rep))
    if strategy == "random":
        return pool_groups[rng.permutation(len(pool_groups))]
    if strategy != "kennard_stone":
        raise ValueError(f"unknown standards strategy {strategy!r}")
    means = _group_means(X_source_pool, pool_groups_per_row, pool_groups)
    if rep == 0:
        return pool_groups[kennard_stone_order(means)]
    k = max(2, int(round(subsample * len(pool_groups))))
    subset = np.sort(rng.permutation(len(pool_groups))[:k])
    ks = subset[kennard_stone_order(means[subset])]
    # samples outside the subsample follow in seeded random order (only reached for N > k)
    rest = np.setdiff1d(np.arange(len(pool_groups)), subset)
    return pool_groups[np.concatenate([ks, rng.permutation(rest)])]


@dataclass(frozen=True)
class Split:
    """One (N, rep) split of a task: rows of the pool, the standards and the test set."""

    n_shots: int
    rep: int
    pool_rows: np.ndarray
    standard_rows: np.ndarray
    test_rows: np.ndarray
    standard_samples: tuple[str, ...]
    strategy: str
    seed: int
    outer: int = 0
    """Outer split (test fold) of the repetition."""
    n_outer: int = 1
    draw: int = 0
    """Standards draw within the outer split (rep = draw * n_outer + outer)."""
    distinct: bool = True
    """False when no standards ordering distinct from the earlier repetitions' could be found."""

    def manifest(self) -> dict[str, Any]:
        body = {
            "strategy": self.strategy,
            "seed": self.seed,
            "n_shots": self.n_shots,
            "rep": self.rep,
            "outer": self.outer,
            "n_outer": self.n_outer,
            "draw": self.draw,
            "distinct": self.distinct,
            "standard_samples": list(self.standard_samples),
            "standard_rows": [int(r) for r in self.standard_rows],
            "test_rows": [int(r) for r in self.test_rows],
            "pool_rows_hash": hash_indices(self.pool_rows),
            "test_rows_hash": hash_indices(self.test_rows),
        }
        body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        return body


class ShotsError(ValueError):
    """Shot count out of the task's or the method's limits."""


MAX_DRAW_ATTEMPTS = 50
"""Redraws tried for a repetition whose standards coincide with an earlier repetition's."""

_ORDERS: dict[tuple, tuple[np.ndarray, bool]] = {}


def _checked_shots(task: Any, n_pool: int) -> list[int]:
    """The shot counts whose standard sets must differ between repetitions: the card's grid,
    below the pool size (N = pool size has a single possible set)."""
    return sorted({int(n) for n in task.card.shots if 1 <= int(n) < n_pool})


def _rep_order(task: Any, rep: int, seed: int) -> tuple[np.ndarray, bool]:
    """The repetition's ordering of its outer pool's samples, and whether it is distinct.

    Repetition r uses outer split ``r % K`` and is its ``r // K``-th standards draw. Draw 0 of a
    Kennard-Stone task is Kennard-Stone on the whole outer pool; a later draw runs it on a seeded
    subsample. A draw whose first N samples equal those of an earlier repetition for some N of the
    card's shot grid is redrawn (a new subsample) until every such set differs, at most
    ``MAX_DRAW_ATTEMPTS`` times (then the attempt with the fewest coincidences is kept, marked not
    distinct). Computed once per process: it does not depend on N or on the method.
    """
    strategy = task.card.standards["strategy"]
    subsample = float(task.card.standards.get("subsample", 0.8))
    base = (task.name, task.version, task.card.sha256, task.outer_hash, strategy, subsample, seed)
    if base + (rep,) in _ORDERS:
        return _ORDERS[base + (rep,)]
    earlier = [_rep_order(task, r, seed)[0] for r in range(rep)]
    k, d = task.outer_of_rep(rep)
    view = task.outer(k)
    pool = view.pool_rows
    shots = _checked_shots(view, view.n_pool_samples)
    taken = {n: {frozenset(o[:n].tolist()) for o in earlier} for n in shots}
    best: tuple[int, np.ndarray] | None = None
    for attempt in range(MAX_DRAW_ATTEMPTS):
        label = d if attempt == 0 else f"{d}/{attempt}"
        order = standards_order(
            task.X_source[pool], task.groups[pool], view.pool_groups, strategy,
            (task.name, task.version, seed, "outer", k), label, subsample,
        )
        clashes = sum(frozenset(order[:n].tolist()) in taken[n] for n in shots)
        if best is None or clashes < best[0]:
            best = (clashes, order)
        if clashes == 0:
            break
    _ORDERS[base + (rep,)] = (best[1], best[0] == 0)
    return _ORDERS[base + (rep,)]


def make_split(task: Any, n_shots: int, rep: int, seed: int = 0) -> Split:
    """The (N, rep) split of a task: the rep's outer split, and its first N standards."""
    k, d = task.outer_of_rep(rep)
    view = task.outer(k)
    n_pool = view.n_pool_samples
    if n_shots < 0 or n_shots > n_pool:
        raise ShotsError(
            f"task {task.name!r}: {n_shots} shots requested but its calibration pool has {n_pool} samples "
            f"(allowed 0..{n_pool})"
        )
    order, distinct = _rep_order(task, rep, seed)
    chosen = order[:n_shots]
    return Split(
        n_shots=n_shots,
        rep=rep,
        pool_rows=view.pool_rows,
        standard_rows=view.rows_of(chosen),
        test_rows=view.test_rows,
        standard_samples=tuple(str(g) for g in chosen),
        strategy=task.card.standards["strategy"],
        seed=seed,
        outer=k,
        n_outer=task.n_outer,
        draw=d,
        distinct=distinct or n_shots not in _checked_shots(view, n_pool),
    )


@dataclass(frozen=True)
class ValidationSplit:
    """A split carved from the calibration pool only: an inner pool, standards, and held-out rows."""

    index: int
    pool_rows: np.ndarray
    standard_rows: np.ndarray
    heldout_rows: np.ndarray


def validation_splits(task: Any, n_splits: int, n_shots: int, seed: int = 0, heldout_fraction: float = 0.25) -> list[ValidationSplit]:
    """K validation splits from the calibration pool (the task's test rows are never used).

    Each holds out a seeded random quarter of the pool's samples as pseudo-test, and draws the
    N standards from the remaining samples by the task's standards strategy.
    """
    pool_groups = task.pool_groups
    n_hold = max(1, int(round(heldout_fraction * len(pool_groups))))
    n_inner = len(pool_groups) - n_hold
    if n_shots > n_inner:
        raise ShotsError(
            f"task {task.name!r}: {n_shots} shots leave no room for validation: the pool has "
            f"{len(pool_groups)} samples, {n_inner} after holding out {n_hold} (allowed 0..{n_inner})"
        )
    out = []
    strategy = task.card.standards["strategy"]
    for v in range(n_splits):
        rng = np.random.default_rng(stable_seed("validation", task.name, task.version, seed, v))
        perm = pool_groups[rng.permutation(len(pool_groups))]
        held, inner = perm[:n_hold], perm[n_hold:]
        inner_rows = task.rows_of(inner)
        order = standards_order(
            task.X_source[inner_rows],
            task.groups[inner_rows],
            inner,
            strategy,
            ("validation", task.name, task.version, seed, v),
            0,
        )
        out.append(
            ValidationSplit(
                index=v,
                pool_rows=inner_rows,
                standard_rows=task.rows_of(order[:n_shots]),
                heldout_rows=task.rows_of(held),
            )
        )
    return out
