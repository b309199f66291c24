"""Estimator benchmark (configs/bench/estimators.py).

Contenders, on the same float32 points, timed in the same run (median wall seconds after a
warm-up call, so our compile time is excluded and reported apart):

- ours_shared: one exact neighbour search with k = k_mle (knn.knn_distinct, duplicate check
  included) feeding the KL entropy (k_entropy-th column), TwoNN (columns 1, 2) and MLE;
- ours_public: the three public functions called one after another (three searches);
- sklearn: NearestNeighbors(n_neighbors=k_mle).fit(x).kneighbors() (one search, all CPU
  threads) and the same three formulas in NumPy float64;
- skdim: skdim.id.TwoNN(discard_fraction).fit(x) + skdim.id.MLE().fit(x, n_neighbors=k_mle)
  (no entropy in skdim), against ours_public's TwoNN + MLE.

The estimates of all contenders are reported side by side. Memory: largest N whose
neighbour search fits the budget per device under the model in knn.memory_bytes (default
block sizes), and XLA's compiled argument + output + temporary bytes at that N.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from jaxcode.bench import common
from jaxcode.estimators import entropy, intrinsic_dim, knn as knn_lib
from jaxcode.errors import ConfigError


def make_points(n: int, d: int, latent: int, noise: float, seed: int) -> np.ndarray:
  """Gaussian points on a random latent-dimensional subspace of R^d plus isotropic noise."""
  if not 1 <= latent <= d:
    raise ConfigError(f"latent={latent}: expected 1 <= latent <= d={d}")
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(rng.standard_normal((d, latent)))
  z = rng.standard_normal((n, latent)) @ basis.T
  return (z + noise * rng.standard_normal((n, d))).astype(np.float32)


# ------------------------------------------------------------------ contenders

def ours_shared(x, k_entropy: int, k_mle: int, discard_fraction: float) -> dict:
  k = max(k_mle, k_entropy, 2)
  nn, n, _ = knn_lib.knn_distinct(x, k, "benchmark")
  dist = nn.dist_NK
  h = entropy.knn_entropy_from_distances(dist[:, k_entropy - 1], x.shape[1], k_entropy)
  n_keep = int(n * (1 - discard_fraction))
  two = float(intrinsic_dim.twonn_from_distances(dist[:, 0], dist[:, 1], n_keep))
  m = intrinsic_dim.mle_from_distances(dist, k_mle)
  return dict(entropy=h, twonn=two, mle=m)


def ours_public(x, k_entropy: int, k_mle: int, discard_fraction: float) -> dict:
  return dict(entropy=entropy.knn_entropy(x, k=k_entropy),
              twonn=intrinsic_dim.twonn(x, discard_fraction=discard_fraction),
              mle=intrinsic_dim.mle(x, k=k_mle))


def sklearn_formulas(x, k_entropy: int, k_mle: int, discard_fraction: float) -> dict:
  from sklearn.neighbors import NearestNeighbors
  k = max(k_mle, k_entropy, 2)
  dist, _ = NearestNeighbors(n_neighbors=k, n_jobs=-1).fit(x).kneighbors()
  dist = dist.astype(np.float64)
  n, d = x.shape
  log_v = 0.5 * d * np.log(np.pi) - special.gammaln(0.5 * d + 1)
  h = (special.digamma(n) - special.digamma(k_entropy) + log_v
       + d * np.mean(np.log(dist[:, k_entropy - 1])))
  n_keep = int(n * (1 - discard_fraction))
  log_mu = np.sort(np.log(dist[:, 1] / dist[:, 0]))[:n_keep]
  y = -np.log(1 - np.arange(1, n_keep + 1) / n)
  two = np.sum(log_mu * y) / np.sum(log_mu * log_mu)
  t = dist[:, :k_mle]
  m = 1.0 / np.mean(np.sum(np.log(t[:, -1:] / t), axis=1) / (k_mle - 1))
  return dict(entropy=float(h), twonn=float(two), mle=float(m))


def skdim_pair(x, k_mle: int, discard_fraction: float) -> dict:
  import skdim
  two = skdim.id.TwoNN(discard_fraction=discard_fraction).fit(x).dimension_
  m = skdim.id.MLE().fit(x, n_neighbors=k_mle).dimension_
  return dict(twonn=float(two), mle=float(m))


def ours_pair(x, k_mle: int, discard_fraction: float) -> dict:
  return dict(twonn=intrinsic_dim.twonn(x, discard_fraction=discard_fraction),
              mle=intrinsic_dim.mle(x, k=k_mle))


# ------------------------------------------------------------------ timing and memory

def _timed(fn, repeats: int, warmup: int = 1):
  """(median seconds, last result, seconds of the first call)."""
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    out = fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out, first


def memory_figure(budget_gib: float, d: int, k: int) -> dict:
  """Largest N in the budget (model) and XLA's compiled buffer bytes at that N."""
  budget = budget_gib * 2 ** 30
  n_max = knn_lib.largest_n(budget, d, k)
  p = knn_lib.plan(n_max, k, d)
  model = knn_lib.memory_bytes(p, d)
  x = jax.ShapeDtypeStruct((n_max, d), jnp.float32)
  mem = knn_lib.knn_program.lower(x, p=p, metric="euclidean", mesh=None).compile() \
      .memory_analysis()
  compiled = None
  if mem is not None:
    compiled = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                   + mem.temp_size_in_bytes)
  return dict(largest_n=int(n_max), budget_bytes=int(budget), model_bytes=model,
              compiled_bytes=compiled,
              compiled_fits=None if compiled is None else bool(compiled <= budget),
              query_block=p.q, ref_block=p.r, group=p.c, ref_blocks=p.n_ref_blocks,
              n_by_n_float32_bytes=int(n_max) ** 2 * 4)


def run(config) -> dict:
  if config.k_entropy < 1 or config.k_mle < 2 or config.n <= config.k_mle:
    raise ConfigError(f"k_entropy={config.k_entropy}, k_mle={config.k_mle}, n={config.n}: "
                      f"expected k_entropy >= 1, k_mle >= 2, n > k_mle")
  x = make_points(config.n, config.d, config.latent, config.noise, config.seed)
  ke, km, f = config.k_entropy, config.k_mle, config.discard_fraction
  r = config.repeats

  t_shared, est_shared, first_shared = _timed(lambda: ours_shared(x, ke, km, f), r)
  t_public, est_public, first_public = _timed(lambda: ours_public(x, ke, km, f), r)
  t_pair, _, _ = _timed(lambda: ours_pair(x, km, f), r)
  t_sk, est_sk, _ = _timed(lambda: sklearn_formulas(x, ke, km, f), r, warmup=0)
  t_skdim, est_skdim, _ = _timed(lambda: skdim_pair(x, km, f), config.skdim_repeats,
                                 warmup=0)
  flops = 2.0 * config.n ** 2 * config.d
  peak = common.matmul_flops_per_s(int(config.get("matmul_n", 2048)))
  return dict(
      device=common.device_summary(), n=config.n, d=config.d, k_entropy=ke, k_mle=km,
      seconds=dict(ours_shared=t_shared, ours_public=t_public, ours_twonn_mle=t_pair,
                   sklearn=t_sk, skdim_twonn_mle=t_skdim,
                   ours_shared_first_call=first_shared, ours_public_first_call=first_public),
      ratios=dict(
          sklearn_over_ours_shared=t_sk / t_shared,
          sklearn_over_ours_public=t_sk / t_public,
          skdim_over_ours_twonn_mle=t_skdim / t_pair),
      estimates=dict(ours_shared=est_shared, ours_public=est_public, sklearn=est_sk,
                     skdim=est_skdim),
      distance_flops_per_s=flops / t_shared,
      distance_matmul_fraction_of_peak=flops / t_shared / peak,
      matmul_flops_per_s=peak,
      memory=memory_figure(config.budget_gib, config.d, max(km, ke, 2)),
  )
