"""Intrinsic dimension: TwoNN, Levina–Bickel MLE (MacKay–Ghahramani average), PCA
participation ratio.

Conventions follow scikit-dimension 0.5 so that the numbers agree (tests check 1e-6):

- TwoNN (Facco et al. 2017): mu_i = r2/r1; keep the n_keep = int(N (1 - f)) smallest mu;
  F_emp(mu_(i)) = i / N; 'linear' = least squares through the origin of -ln(1 - F_emp) on
  ln mu (slope = d); 'mle' = (n_keep - 1) / (sum_{i <= n_keep} ln mu_(i)
  + (N - n_keep) ln mu_(n_keep)) (censored, unbiased; = (N - 1)/sum ln mu at f = 0).
- MLE (Levina & Bickel 2004): per point m_i = (k - 1) / sum_{j <= k} ln(T_k / T_j), with
  T_j the distance to the j-th neighbour (k - 2 with unbiased=True); global estimate the
  harmonic mean 1 / mean(1 / m_i) (MacKay & Ghahramani 2005, skdim comb='mle');
  `mle_range` averages that estimate over k = k1..k2 (Levina & Bickel's k range).
- Participation ratio: (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues, as
  tr(C)^2 / tr(C^2) (skdim lPCA(ver='participation_ratio')).

Duplicate points (r1 = 0) are dropped with a warning, or raise, before estimating.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
from jax.sharding import Mesh

from jaxcode.estimators import knn as knn_lib
from jaxcode.estimators.spectrum import covariance
from jaxcode.errors import ConfigError

TWONN_METHODS = ("linear", "mle")


# ------------------------------------------------------------------ TwoNN

@functools.partial(jax.jit, static_argnames=("method",))
def twonn_from_distances(r1_N, r2_N, n_keep, method: str = "linear"):
  """TwoNN from first and second neighbour distances (all r1 > 0), keeping the n_keep
  smallest ratios (n_keep is traced, so one program serves every discard fraction)."""
  n = r1_N.shape[0]
  log_mu = jnp.sort(jnp.log(r2_N / r1_N))
  i = jnp.arange(1, n + 1)
  keep = i <= n_keep
  if method == "mle":
    last = log_mu[n_keep - 1]
    return (n_keep - 1) / (jnp.sum(jnp.where(keep, log_mu, 0.0)) + (n - n_keep) * last)
  f_emp = jnp.where(keep, i / n, 0.0).astype(log_mu.dtype)
  y = -jnp.log1p(-f_emp)
  x = jnp.where(keep, log_mu, 0.0)
  return jnp.sum(x * y) / jnp.sum(x * x)


def _n_keep(n: int, discard_fraction: float, method: str) -> int:
  n_keep = int(n * (1 - discard_fraction))
  if n_keep < 2:
    raise ConfigError(f"discard_fraction={discard_fraction} with N={n} keeps {n_keep} ratios: "
                      f"TwoNN needs at least 2")
  if method == "linear" and n_keep == n:
    raise ConfigError(f"discard_fraction={discard_fraction} with N={n} keeps every ratio: the "
                      f"linear fit needs F_emp < 1 (discard at least one, or method='mle')")
  return n_keep


def twonn(x, discard_fraction: float = 0.1, method: str = "linear", duplicates: str = "drop",
          mesh: Mesh | None = None) -> float:
  """TwoNN intrinsic dimension of the rows of x (N, d), N >= 3."""
  if method not in TWONN_METHODS:
    raise ConfigError(f"method={method!r}: expected one of {TWONN_METHODS}")
  if not 0.0 <= discard_fraction < 1.0:
    raise ConfigError(f"discard_fraction={discard_fraction}: expected 0 <= value < 1")
  n0 = knn_lib.check_points(x, min_n=3).shape[0]
  _n_keep(n0, discard_fraction, method)
  nn, n, _ = knn_lib.knn_distinct(x, 2, "twonn", duplicates, "euclidean", mesh, min_n=3)
  n_keep = _n_keep(n, discard_fraction, method)
  return float(twonn_from_distances(nn.dist_NK[:, 0], nn.dist_NK[:, 1], n_keep, method))


# ------------------------------------------------------------------ Levina–Bickel MLE

@jax.jit
def inverse_mle_pointwise(dist_NK, k, kfac):
  """1 / m_i for each point from its first k neighbour distances (k traced; inverse, so
  that a point with all k distances equal gives 0 rather than inf)."""
  t_k = lax.dynamic_index_in_dim(dist_NK, k - 1, axis=1)
  use = jnp.arange(dist_NK.shape[1])[None, :] < k
  return jnp.sum(jnp.where(use, jnp.log(t_k / dist_NK), 0.0), axis=1) / kfac


def mle_from_distances(dist_NK, k: int, unbiased: bool = False) -> float:
  """Harmonic mean over points of the Levina–Bickel estimate with the first k neighbours."""
  kfac = k - 2 if unbiased else k - 1
  return float(1.0 / jnp.mean(inverse_mle_pointwise(dist_NK, k, kfac)))


def _check_mle_k(k: int, n: int, unbiased: bool, name: str = "k") -> int:
  return knn_lib.check_k(k, n, name, low=3 if unbiased else 2)


def mle(x, k: int = 20, unbiased: bool = False, duplicates: str = "drop",
        mesh: Mesh | None = None) -> float:
  """Levina–Bickel MLE with k neighbours, harmonic mean over points (skdim MLE)."""
  n0 = knn_lib.check_points(x, min_n=3).shape[0]
  _check_mle_k(k, n0, unbiased)
  nn, _, _ = knn_lib.knn_distinct(x, k, "mle", duplicates, "euclidean", mesh, min_n=k + 1)
  return mle_from_distances(nn.dist_NK, k, unbiased)


def mle_range(x, k1: int = 10, k2: int = 20, unbiased: bool = False, duplicates: str = "drop",
              mesh: Mesh | None = None) -> float:
  """mle averaged over k = k1..k2 (one neighbour search with k2)."""
  n0 = knn_lib.check_points(x, min_n=3).shape[0]
  _check_mle_k(k1, n0, unbiased, "k1")
  _check_mle_k(k2, n0, unbiased, "k2")
  if k1 > k2:
    raise ConfigError(f"k1={k1}, k2={k2}: expected k1 <= k2")
  nn, _, _ = knn_lib.knn_distinct(x, k2, "mle_range", duplicates, "euclidean", mesh,
                                  min_n=k2 + 1)
  return float(np.mean([mle_from_distances(nn.dist_NK, k, unbiased)
                        for k in range(k1, k2 + 1)]))


# ------------------------------------------------------------------ participation ratio

@jax.jit
def participation_ratio_from_cov(cov_DD):
  return jnp.trace(cov_DD) ** 2 / jnp.sum(cov_DD * cov_DD)


def participation_ratio(x, mesh: Mesh | None = None) -> float:
  """(sum lambda)^2 / sum lambda^2 of the covariance eigenvalues of x (N, d), N >= 2."""
  x = knn_lib.check_points(x, min_n=2)
  cov = covariance(x, mesh)
  if float(jnp.trace(cov)) == 0.0:
    raise ConfigError("x has zero variance in every column: the participation ratio is 0/0")
  return float(participation_ratio_from_cov(cov))
