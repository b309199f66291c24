"""Kozachenko–Leonenko k-NN differential entropy, Gaussian entropy, clustering entropy.

    H_KL = psi(N) - psi(k) + ln V_d + (d / N) sum_i ln eps_i

eps_i is the distance from x_i to its k-th nearest neighbour among the other N - 1 points,
V_d the volume of the unit ball of the norm: pi^(d/2) / Gamma(d/2 + 1) (Euclidean) or 2^d
(max-norm). With the max-norm this is NPEET's `entropy` (without its jitter). Units: nats,
or bits (divided by ln 2). The sum of logs runs on the device; the constants are exact
float64 host values.

Known bias (geometry notes D.4): reliable for d up to ~10 at N = 5000; at d = 100 it
over-estimates a Gaussian's entropy by ~16 nats. Duplicate points (eps = 0) are dropped
with a warning, or raise, before estimating (knn.knn_distinct).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from scipy import special

from jaxcode.estimators import knn as knn_lib
from jaxcode.estimators.spectrum import covariance
from jaxcode.errors import ConfigError

UNITS = ("nats", "bits")


def _check_units(units: str) -> float:
  if units not in UNITS:
    raise ConfigError(f"units={units!r}: expected one of {UNITS}")
  return 1.0 if units == "nats" else math.log(2.0)


def log_unit_ball_volume(d: int, metric: str = "euclidean") -> float:
  """ln V_d of the unit ball in d dimensions for the metric."""
  knn_lib.check_metric(metric)
  if metric == "euclidean":
    return 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
  return d * math.log(2.0)


@jax.jit
def _mean_log(eps_N):
  return jnp.mean(jnp.log(eps_N))


def knn_entropy_from_distances(eps_N, d: int, k: int, metric: str = "euclidean",
                               units: str = "nats") -> float:
  """KL entropy from the k-th neighbour distances eps_N of N points in d dimensions."""
  scale = _check_units(units)
  n = int(eps_N.shape[0])
  const = float(special.digamma(n) - special.digamma(k)) + log_unit_ball_volume(d, metric)
  return (const + d * float(_mean_log(eps_N))) / scale


def knn_entropy(x, k: int = 1, metric: str = "euclidean", units: str = "nats",
                duplicates: str = "drop", mesh: Mesh | None = None) -> float:
  """Kozachenko–Leonenko entropy of the rows of x (N, d), in nats by default."""
  scale = _check_units(units)
  knn_lib.check_metric(metric)
  nn, _, _ = knn_lib.knn_distinct(x, k, "knn_entropy", duplicates, metric, mesh, min_n=k + 1)
  return knn_entropy_from_distances(nn.dist_NK[:, k - 1], np.shape(x)[1], k, metric) / scale


def gaussian_entropy_from_cov(cov_DD, units: str = "nats") -> float:
  """Entropy of a Gaussian with covariance cov: (d/2)(1 + ln 2 pi) + (1/2) ln det cov."""
  scale = _check_units(units)
  cov = jnp.asarray(cov_DD)
  d = cov.shape[0]
  sign, logdet = jnp.linalg.slogdet(cov)
  if float(sign) <= 0:
    raise ConfigError(f"covariance of shape {tuple(cov.shape)} is singular: the Gaussian "
                      f"entropy needs a full-rank covariance (N > d, no collinear columns)")
  return (0.5 * d * (1.0 + math.log(2.0 * math.pi)) + 0.5 * float(logdet)) / scale


def gaussian_entropy(x, units: str = "nats", mesh: Mesh | None = None) -> float:
  """Entropy of the Gaussian with the covariance (ddof = 1) of the rows of x (N, d)."""
  _check_units(units)
  x = knn_lib.check_points(x, min_n=2)
  return gaussian_entropy_from_cov(covariance(x, mesh), units)


def clustering_entropy(x, k: int = 1, metric: str = "euclidean", units: str = "nats",
                       duplicates: str = "drop", mesh: Mesh | None = None) -> float:
  """H_gauss - H_kNN: how far the data's entropy falls below a Gaussian of the same
  covariance (>= 0 up to estimator error, since the Gaussian maximises entropy)."""
  h_knn = knn_entropy(x, k, metric, units, duplicates, mesh)
  return gaussian_entropy(x, units, mesh) - h_knn
