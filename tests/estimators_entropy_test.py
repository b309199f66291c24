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
from jaxcode.parallel import ConfigError, make_mesh


def _kl_reference(x, k, metric):
  n, d = x.shape
  p = 2 if metric == "euclidean" else np.inf
  eps = cKDTree(x).query(x, k + 1, p=p)[0][:, k]
  log_v = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1) if p == 2 else d * np.log(2)
  return digamma(n) - digamma(k) + log_v + d * np.mean(np.log(eps))


@pytest.mark.parametrize("metric", ["euclidean", "maxnorm"])
@pytest.mark.parametrize("k", [1, 4])
def test_matches_ckdtree_formula(metric, k):
  x = np.random.default_rng(0).standard_normal((400, 3)) @ np.array(
      [[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.2]])
  with jax.enable_x64(True):
    got = E.knn_entropy(x, k=k, metric=metric)
  np.testing.assert_allclose(got, _kl_reference(x, k, metric), rtol=1e-6)


def test_bits_are_nats_over_ln2():
  x = np.random.default_rng(1).standard_normal((200, 2))
  with jax.enable_x64(True):
    nats = E.knn_entropy(x, k=2)
    bits = E.knn_entropy(x, k=2, units="bits")
  np.testing.assert_allclose(bits, nats / math.log(2), rtol=1e-12)


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
  sample does not."""
  rng = np.random.default_rng(2)
  g = rng.standard_normal((1000, 2))
  two = np.concatenate([rng.standard_normal((500, 2)) * 0.1 - 5, rng.standard_normal((500, 2))
                        * 0.1 + 5])
  with jax.enable_x64(True):
    assert abs(E.clustering_entropy(g)) < 0.05
    assert E.clustering_entropy(two) > 3.0


def test_sharded_equals_single_device():
  x = np.random.default_rng(3).standard_normal((300, 4)).astype(np.float32)
  one = E.knn_entropy(x, k=3)
  many = E.knn_entropy(x, k=3, mesh=make_mesh())
  np.testing.assert_allclose(many, one, rtol=1e-6)


def test_duplicates_dropped_with_warning_or_refused():
  x = np.random.default_rng(4).standard_normal((100, 2))
  xd = np.concatenate([x, x[:5]])
  with jax.enable_x64(True):
    with pytest.warns(UserWarning, match="dropped 5 duplicate rows"):
      got = E.knn_entropy(xd)
    np.testing.assert_allclose(got, E.knn_entropy(x), rtol=1e-12)
  with pytest.raises(ConfigError, match="5 duplicate rows"):
    E.knn_entropy(xd, duplicates="error")


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((4, 2)), k=4), "k=4 with N=4"),
    (dict(x=np.array([[np.nan, 0.0], [1.0, 1.0], [2.0, 0.0]])), "NaN or Inf"),
    (dict(x=np.ones((1, 2))), "N >= 2"),
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
