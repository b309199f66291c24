"""Tests of jaxcode.estimators.entropy.

References we did not write: scipy.spatial.cKDTree neighbour distances put through the same
Kozachenko–Leonenko formula (with scipy.special.digamma / gammaln), compared to 1e-6
relative in float64 (jax.enable_x64); the analytic entropy of a Gaussian,
(d/2)(1 + ln 2 pi) + (1/2) ln det C, recovered within 1% at N = 5000 in d = 2 and d = 10.
"""

import math

import jax
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from jaxcode.estimators import entropy as E
from jaxcode.errors import ConfigError
from jaxcode.parallel import make_mesh


def _points(n=400, d=8, seed=0):
  """Correlated Gaussian points. (400, 8) float64 is the shape the intrinsic-dimension
  tests use too, so one compiled neighbour search serves both files."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, d)) @ (np.eye(d) + 0.3 * rng.standard_normal((d, d)))


def _kl_reference(x, k, metric):
  n, d = x.shape
  p = 2 if metric == "euclidean" else np.inf
  eps = cKDTree(x).query(x, k + 1, p=p)[0][:, k]
  log_v = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1) if p == 2 else d * np.log(2)
  return digamma(n) - digamma(k) + log_v + d * np.mean(np.log(eps))


@pytest.mark.parametrize("metric, k", [("euclidean", 1), ("euclidean", 2), ("maxnorm", 2)])
def test_matches_ckdtree_formula(metric, k):
  x = _points()
  with jax.enable_x64(True):
    got = E.knn_entropy(x, k=k, metric=metric)
    bits = E.knn_entropy(x, k=k, metric=metric, units="bits")
  np.testing.assert_allclose(got, _kl_reference(x, k, metric), rtol=1e-6)
  np.testing.assert_allclose(bits, got / math.log(2), rtol=1e-12)


@pytest.mark.parametrize("d", [2, 10])
def test_gaussian_entropy_recovered_within_1pct(d):
  """N(0, C) with C = 4 R R^T (R a random rotation), N = 5000, k = 1.

  Isotropic up to rotation on purpose: the KL estimator is not affine-equivariant at
  finite N, and a strongly anisotropic C (condition number ~50) biases it by ~13% in d = 10.
  """
  rng = np.random.default_rng(d)
  rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
  x = rng.standard_normal((5000, d)) * 2.0 @ rot.T
  true = 0.5 * d * (1 + np.log(2 * np.pi)) + d * np.log(2.0)
  with jax.enable_x64(True):
    h_knn = E.knn_entropy(x, k=1)
    h_gauss = E.gaussian_entropy(x)
  assert abs(h_knn / true - 1) < 0.01, (h_knn, true)
  assert abs(h_gauss / true - 1) < 0.01, (h_gauss, true)


def test_clustering_entropy_sign():
  """Two far-apart clusters sit well below the Gaussian of their covariance; a Gaussian
  sample does not. N = 5000, d = 2, k = 1 (the shapes of the d = 2 test above)."""
  rng = np.random.default_rng(2)
  g = rng.standard_normal((5000, 2))
  two = np.concatenate([rng.standard_normal((2500, 2)) * 0.1 - 5,
                        rng.standard_normal((2500, 2)) * 0.1 + 5])
  with jax.enable_x64(True):
    assert abs(E.clustering_entropy(g)) < 0.05
    assert E.clustering_entropy(two) > 3.0


def test_sharded_equals_single_device():
  x = _points().astype(np.float32)
  one = E.knn_entropy(x, k=2)
  many = E.knn_entropy(x, k=2, mesh=make_mesh())
  np.testing.assert_allclose(many, one, rtol=1e-6)


def test_duplicates_dropped_with_warning_or_refused():
  x = _points()
  xd = np.concatenate([x, x[:7]])
  with jax.enable_x64(True):
    with pytest.warns(UserWarning, match="dropped 7 duplicate rows"):
      got = E.knn_entropy(xd, k=2)
    np.testing.assert_allclose(got, E.knn_entropy(x, k=2), rtol=1e-12)
    with pytest.raises(ConfigError, match="7 duplicate rows"):
      E.knn_entropy(xd, k=2, duplicates="error")


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((4, 2)), k=4), "k=4 with N=4"),
    (dict(x=np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, 0.0]])), "NaN or Inf"),
    (dict(x=np.ones((1, 2))), "N=1 points"),
    (dict(x=np.eye(3), units="bans"), "units='bans'"),
    (dict(x=np.eye(3), metric="l1"), "metric='l1'"),
])
def test_bad_input_one_line(kwargs, match):
  with pytest.raises(ConfigError, match=match) as e:
    E.knn_entropy(**kwargs)
  assert "\n" not in str(e.value)


def test_singular_covariance_refused():
  x = np.random.default_rng(5).standard_normal((50, 1)) * np.ones((1, 3))
  with pytest.raises(ConfigError, match="singular"):
    E.gaussian_entropy(x)
