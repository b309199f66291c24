"""Symmetry breaking and drift of coding schemes across Langevin samples (layer 3).

Posterior samples come as S stored samples x C independent chains. The network's
posterior is invariant under permutations of the hidden neurons, so two chains
can implement the same coding scheme on different neurons (symmetry breaking),
and within one chain the neurons that carry each code can change over sampling
time (drift). Host numpy on per-sample summaries:

* code_id_SCN: each neuron's code as an integer (bit c set when class c drives it,
  analysis.coding_schemes.codes) or -1 for a non-coding neuron;
* contrib_SCN: each neuron's contribution ||a_i|| rms phi_i (its share of the output);
* a_SCNM: the readouts.

Identity-matched measures between two samples (same neuron index i):
  readout_corr   Pearson correlation of the readouts over all (i, k);
  code_agreement neurons coding in both with the same code / neurons coding in either;
  top_overlap    |top-m neurons of one  &  top-m of the other| / m (m = classes).
Permutation-invariant measure: scheme_overlap = 1 - total variation distance of
the two code histograms (the same scheme on different neurons gives 1).

`drift` reports them within a chain as functions of the lag between samples,
and between chains at equal sampling time, beside a null that permutes the
neurons of the second sample (what unrelated neuron identities give; identity-matched
measures only, as a permutation leaves the scheme unchanged).
"""

from __future__ import annotations

import numpy as np

from jaxcode.errors import ConfigError


def code_ids(binary_NC: np.ndarray, coding_N: np.ndarray) -> np.ndarray:
  """Integer code per neuron (sum of 2^c over the classes c driving it), -1 if not coding."""
  b = np.asarray(binary_NC, bool)
  ids = (b * (1 << np.arange(b.shape[1], dtype=np.int64))).sum(1)
  return np.where(np.asarray(coding_N, bool), ids, -1)


def readout_corr(a1_NM: np.ndarray, a2_NM: np.ndarray) -> float:
  x, y = np.ravel(a1_NM).astype(np.float64), np.ravel(a2_NM).astype(np.float64)
  x, y = x - x.mean(), y - y.mean()
  return float((x @ y) / max(np.sqrt((x @ x) * (y @ y)), 1e-300))


def code_agreement(id1_N: np.ndarray, id2_N: np.ndarray) -> float:
  either = (id1_N >= 0) | (id2_N >= 0)
  same = (id1_N >= 0) & (id1_N == id2_N)
  return float(same.sum() / either.sum()) if either.any() else float("nan")


def top_overlap(c1_N: np.ndarray, c2_N: np.ndarray, m: int) -> float:
  t1, t2 = np.argsort(-c1_N, kind="stable")[:m], np.argsort(-c2_N, kind="stable")[:m]
  return float(len(np.intersect1d(t1, t2)) / m)


def scheme_overlap(id1_N: np.ndarray, id2_N: np.ndarray) -> float:
  """1 - TV distance of the code histograms over coding neurons."""
  h1, h2 = _hist(id1_N), _hist(id2_N)
  if not h1 or not h2:
    return float("nan")
  keys = set(h1) | set(h2)
  return float(1 - 0.5 * sum(abs(h1.get(k, 0.0) - h2.get(k, 0.0)) for k in keys))


def _hist(ids):
  ids = ids[ids >= 0]
  if ids.size == 0:
    return {}
  k, n = np.unique(ids, return_counts=True)
  return dict(zip(k.tolist(), (n / n.sum()).tolist()))


def _pair(a1, a2, i1, i2, c1, c2, m) -> dict:
  return {"readout_corr": readout_corr(a1, a2), "code_agreement": code_agreement(i1, i2),
          "top_overlap": top_overlap(c1, c2, m), "scheme_overlap": scheme_overlap(i1, i2)}


KEYS = ("readout_corr", "code_agreement", "top_overlap", "scheme_overlap")


def _mean(rows: list[dict]) -> dict:
  return {k: float(np.nanmean([r[k] for r in rows])) if rows else float("nan") for k in KEYS}


def drift(a_SCNM: np.ndarray, code_id_SCN: np.ndarray, contrib_SCN: np.ndarray,
          max_lag: int | None = None, seed: int = 0) -> dict:
  """Within-chain measures by lag 1..max_lag (samples apart), between-chain measures at
  equal sample index (all chain pairs), and the permuted-neuron null."""
  a, ids, con = np.asarray(a_SCNM), np.asarray(code_id_SCN), np.asarray(contrib_SCN)
  s, c, n = ids.shape
  if a.shape[:3] != (s, c, n) or con.shape != (s, c, n):
    raise ConfigError(f"drift: readouts {a.shape}, codes {ids.shape}, contributions "
                      f"{con.shape}; expected the same (samples, chains, neurons)")
  m = a.shape[3]
  max_lag = s - 1 if max_lag is None else min(int(max_lag), s - 1)
  within = []
  for lag in range(1, max_lag + 1):
    rows = [_pair(a[i, k], a[i + lag, k], ids[i, k], ids[i + lag, k], con[i, k], con[i + lag, k],
                  m) for k in range(c) for i in range(s - lag)]
    within.append(dict(lag=lag, **_mean(rows)))
  between = [_pair(a[i, k], a[i, j], ids[i, k], ids[i, j], con[i, k], con[i, j], m)
             for i in range(s) for k in range(c) for j in range(k + 1, c)]
  perm = np.random.default_rng(seed).permutation(n)
  null = [_pair(a[i, k], a[i, k][perm], ids[i, k], ids[i, k][perm], con[i, k], con[i, k][perm],
                m) for i in range(s) for k in range(c)]
  null = {k: v for k, v in _mean(null).items() if k != "scheme_overlap"}   # 1 by construction
  return {"within_chain_by_lag": within, "between_chains": _mean(between),
          "permuted_null": null, "top_overlap_chance": m / n,
          "n_samples": s, "n_chains": c}
