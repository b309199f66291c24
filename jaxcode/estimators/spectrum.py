"""Covariance eigenspectra and their power-law fits.

`covariance` accumulates X^T X over row blocks (a scan), with the blocks sharded over the
mesh's 'data' axis; the per-device partial sums are added by XLA, so the memory per device
is the (block, d) slice plus the (d, d) accumulator, whatever N is.

The power-law fit regresses log eigenvalue on log rank over a declared 1-based rank
window lo..hi (inclusive): ordinary least squares ('ols'), or the fit of Stringer et al.
2019 ('rank': weights 1/rank, eigenvalues normalised to sum 1, which moves only the
intercept). The slope is returned as is (negative for a decaying spectrum); alpha =
-slope. The fit itself is a handful of numbers and runs in NumPy float64 on the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcode.estimators.knn import check_points
from jaxcode.errors import ConfigError
from jaxcode.parallel import DATA

COV_BLOCK = 4096
WEIGHTINGS = ("ols", "rank")


@functools.partial(jax.jit, static_argnames=("n",))
def _blocked_gram(x_VBRD, mean_D, n: int):
  """Sum over all real rows of (x - mean)(x - mean)^T; padded rows are masked out."""
  v, b, r, d = x_VBRD.shape
  idx_VBR = jnp.arange(v * b * r, dtype=jnp.int32).reshape(v, b, r)

  def per_device(x_BRD, idx_BR):
    def body(acc, xs):
      xb, ib = xs
      xc = jnp.where((ib < n)[:, None], xb - mean_D, 0.0)
      return acc + xc.T @ xc, None
    acc, _ = lax.scan(body, jnp.zeros((d, d), x_BRD.dtype), (x_BRD, idx_BR))
    return acc

  return jnp.sum(jax.vmap(per_device)(x_VBRD, idx_VBR), axis=0)


def covariance(x, mesh: Mesh | None = None, block: int = COV_BLOCK, ddof: int = 1) -> jax.Array:
  """(d, d) covariance of the rows of x (N, d), accumulated in row blocks.

  Two passes: the mean, then the centred Gram matrix in blocks of `block` rows (sharded
  over 'data' when a mesh is given). Divides by N - ddof.
  """
  x = check_points(x, min_n=ddof + 1)
  n, d = x.shape
  xj = jnp.asarray(x)
  if not jnp.issubdtype(xj.dtype, jnp.floating):
    xj = xj.astype(jnp.float32)
  n_dev = 1 if mesh is None else int(mesh.shape[DATA])
  r = max(1, min(block, -(-n // n_dev)))
  b = -(-n // (n_dev * r))
  xp = jnp.pad(xj, ((0, n_dev * b * r - n), (0, 0))).reshape(n_dev, b, r, d)
  if mesh is not None:
    xp = jax.device_put(xp, NamedSharding(mesh, P(DATA)))
  mean = jnp.mean(xj, axis=0)
  return _blocked_gram(xp, mean, n=n) / (n - ddof)


def eigenvalues(x, mesh: Mesh | None = None, block: int = COV_BLOCK) -> jax.Array:
  """Covariance eigenvalues of x (N, d), descending (clipped at 0 from below)."""
  lam = jnp.linalg.eigvalsh(covariance(x, mesh, block))
  return jnp.maximum(lam[::-1], 0.0)


# ------------------------------------------------------------------ power-law fits

def check_spectrum(eigenvalues, lo: int, hi: int) -> np.ndarray:
  """Validates a 1-D spectrum and a 1-based inclusive rank window; returns it sorted
  descending in float64."""
  lam = np.asarray(eigenvalues, dtype=np.float64)
  if lam.ndim != 1:
    raise ConfigError(f"eigenvalues has shape {lam.shape}: expected a 1-D spectrum")
  if not np.all(np.isfinite(lam)):
    raise ConfigError("eigenvalues contain NaN or Inf: expected finite values")
  if int(lo) != lo or int(hi) != hi or not 1 <= lo < hi <= lam.shape[0]:
    raise ConfigError(f"rank window lo={lo}, hi={hi}: expected integers with "
                      f"1 <= lo < hi <= {lam.shape[0]} (the spectrum's length)")
  lam = np.sort(lam)[::-1]
  window = lam[int(lo) - 1:int(hi)]
  if np.any(window <= 0):
    raise ConfigError(f"rank window lo={lo}, hi={hi} holds {int(np.sum(window <= 0))} "
                      f"eigenvalues <= 0: expected a window of positive eigenvalues")
  return lam


def powerlaw_fit(eigenvalues, lo: int, hi: int, weighting: str = "ols") -> dict:
  """Fit of log eigenvalue against log rank over ranks lo..hi (1-based, inclusive).

  weighting 'ols': unweighted least squares on the raw eigenvalues. 'rank': Stringer et
  al. 2019 (weights 1/rank, eigenvalues divided by their sum over the whole spectrum).
  Returns slope, alpha (= -slope), intercept, r2 (weighted, of the same fit), log_volume
  (sum of the window's log eigenvalues, raw), n (ranks in the window).
  """
  if weighting not in WEIGHTINGS:
    raise ConfigError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}")
  lam = check_spectrum(eigenvalues, lo, hi)
  rank = np.arange(int(lo), int(hi) + 1, dtype=np.float64)
  window = lam[int(lo) - 1:int(hi)]
  y = np.log(window / lam.sum() if weighting == "rank" else window)
  xl = np.log(rank)
  w = 1.0 / rank if weighting == "rank" else np.ones_like(rank)
  xm, ym = np.sum(w * xl) / w.sum(), np.sum(w * y) / w.sum()
  slope = np.sum(w * (xl - xm) * (y - ym)) / np.sum(w * (xl - xm) ** 2)
  intercept = ym - slope * xm
  resid = y - (intercept + slope * xl)
  ss_tot = np.sum(w * (y - ym) ** 2)
  r2 = 1.0 - np.sum(w * resid ** 2) / ss_tot if ss_tot > 0 else 1.0
  return dict(slope=float(slope), alpha=float(-slope), intercept=float(intercept),
              r2=float(r2), log_volume=float(np.sum(np.log(window))), n=int(rank.shape[0]))


def powerlaw_slope(eigenvalues, lo: int, hi: int) -> float:
  """OLS slope of log eigenvalue against log rank over ranks lo..hi (1-based, inclusive)."""
  return powerlaw_fit(eigenvalues, lo, hi, "ols")["slope"]


def log_volume(eigenvalues, lo: int, hi: int) -> float:
  """Log effective volume: sum of log eigenvalues over ranks lo..hi (1-based, inclusive)."""
  return powerlaw_fit(eigenvalues, lo, hi, "ols")["log_volume"]
