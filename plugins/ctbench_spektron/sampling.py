"""Batches for pretraining: a deterministic global batch per step, sharded across processes.

Step ``s`` draws a global batch of ``batch_size * world_size`` samples from a Generator seeded
with (seed, s), shuffles it, and process ``rank`` keeps rows ``rank::world_size`` (as
DistributedSampler does), so the data stream depends only on (seed, step) and resuming a run
replays it exactly. Each sample carries a second view: its natural partner (same specimen on
another instrument; synthetic samples are always paired) or, failing that, itself (to be
augmented). Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corpus import PretrainCorpus


@dataclass
class Batch:
    """Arrays of one process's batch (n rows): view a, view b (partner or copy), their axes."""

    values_a: np.ndarray
    values_b: np.ndarray
    lo_a: np.ndarray
    hi_a: np.ndarray
    lo_b: np.ndarray
    hi_b: np.ndarray
    unit_a: np.ndarray
    unit_b: np.ndarray
    domain_a: np.ndarray
    domain_b: np.ndarray
    instrument_a: np.ndarray
    instrument_b: np.ndarray
    has_partner: np.ndarray
    nonneg: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values_a.shape[0])

    def rows(self, idx: np.ndarray) -> Batch:
        return Batch(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @property
    def same_axis(self) -> np.ndarray:
        return (self.lo_a == self.lo_b) & (self.hi_a == self.hi_b) & (self.unit_a == self.unit_b)


class BatchSampler:
    """Draws batches from a corpus: synthetic share, natural-pair share, the rest uniform."""

    def __init__(self, corpus: PretrainCorpus, batch_size: int, synthetic_fraction: float = 0.3,
                 pair_fraction: float = 0.25, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.corpus = corpus
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        table = corpus.table
        self.partners = table.partners() if table is not None else {}
        self.pair_rows = np.array(sorted(self.partners), dtype=np.int64)
        has_table = table is not None and table.n > 0
        if corpus.synthetic is None:
            synthetic_fraction = 0.0
        if not has_table:
            synthetic_fraction = 1.0
        self.synthetic_fraction = synthetic_fraction
        self.pair_fraction = pair_fraction if self.pair_rows.size else 0.0
        # instrument ids: measured instruments first, then the synthetic ones
        self.instruments = (list(table.instruments) if table is not None else []) + (
            corpus.synthetic.instruments if corpus.synthetic is not None else [])
        self._syn_offset = len(table.instruments) if table is not None else 0

    def global_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        total = self.batch_size * self.world_size
        n_syn = int(round(self.synthetic_fraction * total))
        n_real = total - n_syn
        n_pair = min(n_real, int(round(self.pair_fraction * total)))
        parts = []
        if n_real:
            table = self.corpus.table
            rows = np.concatenate([
                rng.choice(self.pair_rows, size=n_pair) if n_pair else np.empty(0, dtype=np.int64),
                rng.integers(0, table.n, size=n_real - n_pair),
            ]).astype(np.int64)
            partner = rows.copy()
            has = np.zeros(rows.size, dtype=bool)
            for i, r in enumerate(rows):
                cands = self.partners.get(int(r))
                if cands is not None and i < n_pair:
                    partner[i] = cands[rng.integers(0, cands.size)]
                    has[i] = True
            parts.append(Batch(
                values_a=table.values[rows], values_b=table.values[partner], lo_a=table.lo[rows], hi_a=table.hi[rows],
                lo_b=table.lo[partner], hi_b=table.hi[partner], unit_a=table.unit[rows], unit_b=table.unit[partner],
                domain_a=table.domain[rows], domain_b=table.domain[partner], instrument_a=table.instrument[rows],
                instrument_b=table.instrument[partner], has_partner=has, nonneg=table.nonneg[rows],
            ))
        if n_syn:
            s = self.corpus.synthetic.sample(rng, n_syn)
            parts.append(Batch(
                values_a=s["values_a"], values_b=s["values_b"], lo_a=s["lo"], hi_a=s["hi"], lo_b=s["lo"], hi_b=s["hi"],
                unit_a=s["unit"], unit_b=s["unit"], domain_a=s["domain"], domain_b=s["domain"],
                instrument_a=s["instrument_a"] + self._syn_offset, instrument_b=s["instrument_b"] + self._syn_offset,
                has_partner=np.ones(n_syn, dtype=bool), nonneg=s["nonneg"],
            ))
        batch = parts[0] if len(parts) == 1 else Batch(**{
            k: np.concatenate([getattr(p, k) for p in parts]) for k in Batch.__dataclass_fields__})
        return batch.rows(rng.permutation(batch.n))

    def batch(self, step: int) -> Batch:
        """This process's share of the global batch of ``step``."""
        g = self.global_batch(step)
        return g.rows(np.arange(self.rank, g.n, self.world_size))
