"""Crystals found without labels (jaxcode.analysis.crystal_search).

References we did not compute with the code under test: planted parallelograms (words w_i
and w_i + r_k + small noise; the planted relation of each pair and the noise-free vectors
are known by construction); scikit-learn's adjusted_rand_score of the planted labels; an
exact parallelogram and trapezoid whose cosine, length mismatch and error are derived by
hand; the principal directions of all pair differences from numpy's SVD.
"""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from jaxcode.analysis import crystal_search as cs
from jaxcode.errors import ConfigError

N_BASE, N_REL, DIM = 8, 3, 32


def _planted(seed, noise=0.02):
  """Words w_i (i < 8) and w_i + r_k + noise (k < 3): (x_WD, noise-free x, known pairs)."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((N_BASE, DIM))
  offsets = rng.standard_normal((N_REL, DIM))
  clean = np.concatenate([base] + [base + r for r in offsets])
  x = clean + noise * np.concatenate(
      [np.zeros((N_BASE, DIM)), rng.standard_normal((N_REL * N_BASE, DIM))])
  known = [(i, (k + 1) * N_BASE + i, k) for k in range(N_REL) for i in range(N_BASE)]
  return x, clean, known


def test_planted_relations_are_recovered_and_ranked_first():
  """The known pairs' clusters agree with the planted relations (both orientations, six
  directional labels) at least as well as a labelling that merges two of the six labels
  (what K-means does when a relation shares a cluster with a nearby planted direction,
  e.g. r_k - r_l); chance gives ~0. The best quadruple of each top-ranked cluster is a
  planted parallelogram: its two pairs have equal noise-free differences."""
  truth = np.repeat(np.arange(2 * N_REL), N_BASE)
  one_merge = adjusted_rand_score(truth, np.minimum(truth, 2 * N_REL - 2))
  assert 0.7 < one_merge < 0.9
  for seed in range(3):
    x, clean, known = _planted(seed)
    res = cs.search(x, 40, seed=0)
    assert cs.agreement(res, known)["ari"] >= one_merge - 1e-9, seed
    for c in res["clusters"][:4]:
      assert c["score"] < 0.1 and c["size"] >= 4
      (a, b), (p, q) = c["top"][0]["pairs"]
      np.testing.assert_allclose(clean[a] - clean[b], clean[p] - clean[q], atol=1e-9)
      assert len({a, b, p, q}) == 4


def test_exact_parallelogram_and_trapezoid():
  """a, b, a + r, b + r: the sides (a, a+r), (b, b+r) have cos 1, zero length mismatch and
  zero error; replacing b + r by b + 2r (a trapezoid): cos 1, mismatch |1 - 2| / 1.5 = 2/3,
  error |r| / 1.5|r| = 2/3. Pairs sharing a word are not quadruples."""
  rng = np.random.default_rng(0)
  a, b, r = rng.standard_normal((3, 5))
  quad = cs.quadruples(np.stack([a - (a + r), b - (b + r)]), np.array([0, 1]),
                       np.array([2, 3]))
  np.testing.assert_allclose([quad["cos"][0], quad["mismatch"][0], quad["error"][0]],
                             [1, 0, 0], atol=1e-7)   # error via the Gram matrix: sqrt(eps)
  quad = cs.quadruples(np.stack([a - (a + r), b - (b + 2 * r)]), np.array([0, 1]),
                       np.array([2, 3]))
  np.testing.assert_allclose([quad["cos"][0], quad["mismatch"][0], quad["error"][0]],
                             [1, 2 / 3, 2 / 3], atol=1e-7)
  assert cs.quadruples(np.stack([r, r]), np.array([0, 0]), np.array([1, 2]))["p"].size == 0
  res = cs.search(np.stack([a, b, a + r, b + r]), 4, seed=0)
  best = res["clusters"][0]["top"][0]
  assert best["error"] < 1e-5 and best["cos"] > 1 - 1e-6


def test_remove_pcs_matches_numpy_svd_of_all_differences():
  """Projecting out the word vectors' top PC equals projecting out the top right singular
  vector of the matrix of all ordered pair differences (numpy SVD)."""
  x = np.random.default_rng(1).standard_normal((7, 6)) * np.array([5, 1, 1, 1, 1, 1])
  a, b = cs.ordered_pairs(7)
  d = x[a] - x[b]
  v = np.linalg.svd(d, full_matrices=False)[2][0]
  want = d - np.outer(d @ v, v)
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  _, got = cs.unit_differences(x, a, b, remove_pcs=1)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_bad_input():
  x = np.random.default_rng(0).standard_normal((4, 3))
  with pytest.raises(ConfigError, match="3 words: expected >= 4"):
    cs.search(x[:3], 2)
  with pytest.raises(ConfigError, match="n_clusters=13: expected 2 .. 12"):
    cs.search(x, 13)
  with pytest.raises(ConfigError, match="remove_pcs=3: expected 0 .. 2"):
    cs.search(x, 2, remove_pcs=3)
  with pytest.raises(ConfigError, match=r"shape \(12,\): expected \[words, dim\]"):
    cs.search(x.ravel(), 2)
  with pytest.raises(ConfigError, match="no known pairs"):
    cs.agreement(cs.search(x, 2), [])
