"""Tests of jaxcode.analysis.four_properties on synthetic data.

References we did not write: scipy.spatial.distance.pdist (pairwise distances), NumPy
brute-force cosines and a plain-Python 3CosAdd loop, scikit-learn (the probe itself;
checked against chance with shuffled labels), and analytic cases (orthonormal directions,
exact parallelograms).
"""

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from jaxcode.analysis import four_properties as F
from jaxcode.errors import ConfigError


def _clusters(n_per=30, n_cls=4, d=16, sep=6.0, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_cls, d)) * sep
  lab = np.repeat(np.arange(n_cls), n_per)
  return centres[lab] + rng.standard_normal((n_per * n_cls, d)), lab


def test_abstraction_equals_pdist():
  x, lab = _clusters()
  dist = squareform(pdist(x))
  same = lab[:, None] == lab[None, :]
  off = ~np.eye(len(x), dtype=bool)
  want = dist[~same].mean() / dist[same & off].mean()
  np.testing.assert_allclose(F.abstraction_ratio(x, lab, block=7), want, rtol=1e-5)
  assert want > 2.0
  shuffled = np.random.default_rng(1).permutation(lab)
  assert abs(F.abstraction_ratio(x, shuffled) - 1.0) < 0.1


def test_probe_precision_separable_and_chance():
  x, lab = _clusters(d=32)
  assert F.probe_precision(x, lab) > 0.95
  assert F.probe_precision(x, np.random.default_rng(2).permutation(lab), folds=3) < 0.5
  assert F.probe_precision(x, lab, projection=list(range(8)), folds=3) > 0.9


def test_specificity_matches_numpy_and_analytic():
  x, lab = _clusters()
  means = np.stack([x[lab == c].mean(0) for c in range(4)]) - x.mean(0)
  u = means / np.linalg.norm(means, axis=1, keepdims=True)
  c = np.abs(u @ u.T)
  want = 1 - (c.sum() - np.trace(c)) / 12
  np.testing.assert_allclose(F.specificity(x, lab), want, rtol=1e-5)
  # class means along orthogonal axes (uncentred): specificity 1
  e = np.repeat(np.eye(4) * 5.0, 10, axis=0)
  np.testing.assert_allclose(F.specificity(e, np.repeat(np.arange(4), 10), center=False), 1.0,
                             atol=1e-6)


def _brute_3cosadd(e, quads):
  u = e / np.linalg.norm(e, axis=1, keepdims=True)
  out = []
  for a, b, c, _ in quads:
    t = u[b] - u[a] + u[c]
    s = u @ t
    s[[a, b, c]] = -np.inf
    out.append(int(np.argmax(s)))
  return np.asarray(out)


def test_analogy_parallelograms_and_brute_force():
  rng = np.random.default_rng(3)
  base = rng.standard_normal((12, 20))
  offset = rng.standard_normal(20) * 2
  vocab = [f"w{i}" for i in range(12)] + [f"v{i}" for i in range(12)]
  emb = np.concatenate([base, base + offset])
  quads, names = F.analogy_quads({"rel": [(f"w{i}", f"v{i}") for i in range(12)]}, vocab)
  assert quads.shape == (132, 4) and set(names) == {"rel"}
  assert F.analogy_accuracy(emb, quads, block=16) == 1.0
  noisy = emb + rng.standard_normal(emb.shape) * 1.5
  np.testing.assert_array_equal(F.analogy_predictions(noisy, quads, block=16),
                                _brute_3cosadd(noisy, quads))


def test_analogy_excludes_query_words():
  """b - a + c is nearest to c itself here; the answer must come from the other words."""
  emb = np.array([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.02],
                  [0.0, 0.0, 1.0]])
  pred = F.analogy_predictions(emb, np.array([[0, 1, 2, 3]]))
  assert pred[0] == 3


def test_l0_and_orthogonality():
  codes = np.array([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
  assert F.l0_sparsity(codes) == 3 / 8
  q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((16, 16)))
  np.testing.assert_allclose(F.orthogonality(q[:10]), 1.0, atol=1e-6)
  w = np.random.default_rng(5).standard_normal((37, 8))
  u = w / np.linalg.norm(w, axis=1, keepdims=True)
  c = np.abs(u @ u.T)
  want = 1 - (c.sum() - np.trace(c)) / (37 * 36)
  np.testing.assert_allclose(F.orthogonality(w, block=8), want, rtol=1e-5)
  np.testing.assert_allclose(F.orthogonality(np.ones((5, 3))), 0.0, atol=1e-6)


def test_four_properties_row_and_pass_marks():
  """Separated clusters pass abstraction and precision; shuffled labels fail all three."""
  x, lab = _clusters(d=32)
  row = F.four_properties(x, lab, folds=3)
  assert row["pass"]["abstraction"] and row["pass"]["precision"]
  bad = F.four_properties(x, np.random.default_rng(6).permutation(lab), folds=3)
  assert bad["pass"] == {"abstraction": False, "precision": False, "specificity": False}
  assert set(F.PASS_MARKS) == {"abstraction", "precision", "specificity", "systematicity"}


def test_shipped_concepts():
  cats, rels = F.load_categories(), F.load_relations()
  assert len(cats) >= 10 and all(len(v) >= 20 for v in cats.values())
  words = [w for v in cats.values() for w in v]
  assert len(words) == len(set(words))  # no word in two categories
  assert all(w.isalpha() for w in words)
  assert len(rels) >= 6 and all(len(v) >= 15 for v in rels.values())
  assert {"country_capital", "male_female", "singular_plural", "present_past",
          "adjective_comparative"} <= set(rels)
  assert all(len(p) == 2 and all(w.isalpha() for w in p) for v in rels.values() for p in v)


def test_filter_single_token_counts_and_empty():
  kept, counts = F.filter_single_token(["cat", "elephant", "dog"], lambda w: 1 + len(w) // 5)
  assert kept == ["cat", "dog"] and counts == dict(total=3, kept=2, dropped=1)
  with pytest.raises(ConfigError, match="none of 2 words is a single token"):
    F.filter_single_token(["elephant", "giraffe"], lambda w: 2)


@pytest.mark.parametrize("fn, args, match", [
    (F.abstraction_ratio, (np.zeros((4, 2)), np.zeros(4)), "1 classes"),
    (F.abstraction_ratio, (np.full((4, 2), np.nan), np.arange(4) % 2), "NaN or Inf"),
    (F.specificity, (np.zeros((4, 2)), np.arange(3)), "expected \\(4,\\)"),
    (F.probe_precision, (np.zeros((6, 2)), np.arange(6) % 2), "smallest class has 3"),
    (F.analogy_predictions, (np.eye(5), np.array([[0, 1, 2, 9]])), "out of range"),
    (F.orthogonality, (np.zeros((3, 2)),), "zero row"),
])
def test_bad_input_one_line(fn, args, match):
  with pytest.raises(ConfigError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value)
