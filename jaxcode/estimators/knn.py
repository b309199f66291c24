"""Exact k nearest neighbours by blocked pairwise distances, sharded over query blocks.

The points are centred and padded once; that one array serves as queries and references.
Queries are taken in blocks of `query_block` rows and compared with the references in
blocks of `ref_block` rows (both dynamic slices), so the largest temporary is a
(query_block x ref_block) score matrix and never N x N. The query blocks are split over the
mesh's 'data' axis: under `jax.shard_map` each device runs `lax.map` over its own blocks
against its replica of the points, and the outputs come back sharded over 'data'; no
collective is needed (left to the SPMD partitioner, `lax.top_k` over a sharded batch axis
was all-gathered).

Selection inside a reference block is exact and cheaper than a full `lax.top_k` over the
block: the block's scores are cut into groups of `group` columns, and the k groups with
the smallest minima are kept. Every score below the k-th smallest group minimum t lies in
one of those k groups, and those groups hold at least k scores <= t, so the k smallest
scores among them are the k smallest of the block (ties at t may resolve either way).
Then `lax.top_k` runs on k * group candidates instead of ref_block scores.

Euclidean scores are ranked by ||r||^2 - 2 q.r on centred data, one matmul of [-2q, 1]
with the stored rows [r, ||r||^2] per block; the chosen distances are then recomputed
exactly as ||q - r||, so reported distances keep full precision (the selection itself is
in the working precision: in float32, neighbours closer together than ~1e-7 ||r||^2 in
squared distance may swap). Max-norm distances are computed directly.

Self is not masked in the score matrix: k + 1 candidates are selected and self is removed
from them (a point with more than k exact copies keeps k copies at distance 0 and never
itself). Duplicate points are kept as neighbours at distance 0; they
are counted by `n_zero_first` (points whose nearest neighbour is at distance 0) and
`knn_distinct`, which the estimators call, drops repeated rows with a warning giving the
count, or raises, before estimating.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcode.errors import ConfigError
from jaxcode.parallel import DATA

METRICS = ("euclidean", "maxnorm")
DUPLICATE_POLICIES = ("drop", "error")

# Default block sizes; the memory model below is in terms of these.
QUERY_BLOCK = 256
REF_BLOCK = 32768
GROUP = 32
# Max-norm needs a (query_block, ref_block, d) difference tensor; its ref block is cut so
# that tensor stays under this many elements.
MAXNORM_ELEMS = 1 << 24


class Knn(NamedTuple):
  """Sorted neighbour distances and indices, self excluded. dist_NK[:, 0] is the nearest;
  n_zero counts points whose nearest neighbour is at distance 0 (they have duplicates)."""
  dist_NK: jax.Array
  idx_NK: jax.Array
  n_zero: jax.Array


# ------------------------------------------------------------------ input checks

def check_points(x, name: str = "x", min_n: int = 2) -> np.ndarray | jax.Array:
  """Validates an (N, d) point array: 2-D, N >= min_n, all finite. Returns it as is."""
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 2:
    raise ConfigError(f"{name} has shape {tuple(x.shape)}: expected a 2-D array (N, d)")
  n, d = x.shape
  if d < 1:
    raise ConfigError(f"{name} has shape {tuple(x.shape)}: expected at least one column")
  if n < min_n:
    raise ConfigError(f"{name} has N={n} points: this estimator needs N >= {min_n}")
  if not jnp.issubdtype(x.dtype, jnp.floating) and not jnp.issubdtype(x.dtype, jnp.integer):
    raise ConfigError(f"{name} has dtype {x.dtype}: expected a real floating or integer array")
  finite = np.isfinite(x).all() if isinstance(x, np.ndarray) else bool(jnp.isfinite(x).all())
  if not finite:
    raise ConfigError(f"{name} contains NaN or Inf: expected finite values")
  return x


def check_k(k: int, n: int, name: str = "k", low: int = 1) -> int:
  if int(k) != k or k < low:
    raise ConfigError(f"{name}={k}: expected an integer >= {low}")
  if k >= n:
    raise ConfigError(f"{name}={k} with N={n} points: expected {name} < N (self is excluded)")
  return int(k)


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ConfigError(f"metric={metric!r}: expected one of {METRICS}")
  return metric


# ------------------------------------------------------------------ duplicates

def count_duplicates(x) -> int:
  """Number of rows of x that repeat an earlier row (N minus the number of unique rows)."""
  xn = np.asarray(x)
  return int(xn.shape[0] - np.unique(xn, axis=0).shape[0])


def drop_duplicates(x) -> tuple[np.ndarray, int]:
  """x with repeated rows removed (first occurrence kept, order kept) and how many went."""
  xn = np.asarray(x)
  _, first = np.unique(xn, axis=0, return_index=True)
  keep = np.sort(first)
  return xn[keep], int(xn.shape[0] - keep.shape[0])


def n_zero_first(knn: Knn) -> int:
  """Points whose nearest neighbour is at distance 0 (each has at least one duplicate)."""
  return int(knn.n_zero)


def knn_distinct(x, k: int, what: str, duplicates: str = "drop", metric: str = "euclidean",
                 mesh: Mesh | None = None, min_n: int = 2, **blocks) -> tuple[Knn, int, int]:
  """knn after the duplicate policy; returns (Knn, N used, number of rows dropped).

  Duplicates are detected from the neighbours themselves (a point has a duplicate iff its
  nearest neighbour is at distance 0: one scalar fetched from the device). Only then are
  the rows made unique on the host: 'drop' removes repeated rows with a one-line warning
  giving the count and recomputes; 'error' raises.
  """
  if duplicates not in DUPLICATE_POLICIES:
    raise ConfigError(f"duplicates={duplicates!r}: expected one of {DUPLICATE_POLICIES}")
  x = check_points(x, min_n=2)
  check_k(k, x.shape[0])
  if x.shape[0] < min_n:
    raise ConfigError(f"x has N={x.shape[0]} points: {what} needs N >= {min_n}")
  nn = _knn_run(x, k, metric, mesh, **blocks)
  n_zero = n_zero_first(nn)
  if n_zero == 0:
    return nn, x.shape[0], 0
  x_u, n_dup = drop_duplicates(x)
  if duplicates == "error":
    raise ConfigError(f"x has {n_dup} duplicate rows ({n_zero} points at distance 0 from a "
                      f"neighbour): {what} needs distinct points (duplicates='drop' removes them)")
  warnings.warn(f"{what}: dropped {n_dup} duplicate rows of {x.shape[0]} before estimating",
                stacklevel=3)
  if x_u.shape[0] < min_n or k >= x_u.shape[0]:
    raise ConfigError(f"x has {x_u.shape[0]} distinct points after dropping {n_dup} duplicates: "
                      f"{what} needs N >= {max(min_n, k + 1)}")
  return _knn_run(x_u, k, metric, mesh, **blocks), x_u.shape[0], n_dup


# ------------------------------------------------------------------ block geometry

class Plan(NamedTuple):
  """Static block layout for one knn call."""
  n: int            # points
  k: int
  n_dev: int        # devices on the 'data' axis
  q: int            # query block
  blocks_per_dev: int
  r: int            # reference block (multiple of c)
  c: int            # group size inside a reference block
  n_ref_blocks: int


def plan(n: int, k: int, d: int, metric: str = "euclidean", n_dev: int = 1,
         query_block: int = QUERY_BLOCK, ref_block: int = REF_BLOCK,
         group: int = GROUP) -> Plan:
  """Block sizes for N points; small N shrinks the blocks so padding stays small."""
  q = max(1, min(query_block, -(-n // n_dev)))
  blocks_per_dev = -(-n // (n_dev * q))
  r_target = min(ref_block, n)
  if metric == "maxnorm":
    r_target = max(1, min(r_target, MAXNORM_ELEMS // max(1, q * d)))
  r_target = max(r_target, k + 1)
  c = max(1, min(group, r_target // (k + 1)))
  g = -(-r_target // c)
  r = g * c
  return Plan(n, k, n_dev, q, blocks_per_dev, r, c, -(-n // r))


def memory_bytes(p: Plan, d: int, itemsize: int = 4, metric: str = "euclidean") -> dict:
  """Memory model of one knn call, in bytes per device.

  Resident: the caller's (N, d) input; the centred, padded copy that serves as queries and
  references (replicated on every device) with its squared norms; this device's padded
  (k distances, k int32 indices) output and the unpadded (N, k) pair sliced from it.
  Working set of one step of the block loop: the query_block x ref_block score matrix, its
  group minima, the k*group candidates with their indices, the running and merged top-k,
  and the (query_block, k, d) gather for exact distances; doubled for the loop's buffering.
  Max-norm adds the (query_block, ref_block, d) difference tensor.
  """
  out_local = p.blocks_per_dev * p.q * p.k * (itemsize + 4)
  resident = (p.n * d * itemsize + _n_pad(p) * (d + 1) * itemsize + out_local
              + p.n * p.k * (itemsize + 4))
  g, m = p.r // p.c, p.k + 1
  step = (p.q * p.r * itemsize + p.q * g * itemsize + p.q * m * p.c * (itemsize + 4)
          + 4 * p.q * m * (itemsize + 4) + p.q * m * d * itemsize)
  if metric == "maxnorm":
    step += p.q * p.r * d * itemsize
  return dict(resident=resident, working=2 * step, total=resident + 2 * step)


def largest_n(budget_bytes: float, d: int, k: int, metric: str = "euclidean", n_dev: int = 1,
              itemsize: int = 4, **blocks) -> int:
  """Largest N whose memory model (per device) fits the budget, by bisection on N."""
  def fits(n):
    mem = memory_bytes(plan(n, k, d, metric, n_dev, **blocks), d, itemsize, metric)
    return mem["total"] <= budget_bytes
  lo, hi = k + 1, k + 2
  while fits(hi):
    lo, hi = hi, hi * 2
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


# ------------------------------------------------------------------ the kernel

def _block_select(s_QR, ridx_R, k: int, c: int):
  """The k smallest scores per row of s_QR and their reference indices (unsorted).

  Exact two-stage selection: the k groups (of c columns) with the smallest minima contain
  the k smallest scores (module docstring).
  """
  q, r = s_QR.shape
  if c == 1:
    neg, pos = lax.top_k(-s_QR, k)
    return -neg, ridx_R[pos]
  s_QGC = s_QR.reshape(q, r // c, c)
  _, gsel_QK = lax.top_k(-s_QGC.min(-1), k)
  cand = jnp.take_along_axis(s_QGC, gsel_QK[:, :, None], axis=1).reshape(q, k * c)
  cidx = (gsel_QK[:, :, None] * c + jnp.arange(c)[None, None, :]).reshape(q, k * c)
  neg, pos = lax.top_k(-cand, k)
  return -neg, ridx_R[jnp.take_along_axis(cidx, pos, axis=1)]


def _query_block(start, xa_PA, p: Plan, metric: str):
  """Neighbours of the query block at rows start..start+q of the padded points against all
  reference blocks (slices of the same array; a scan with a top-k merge when several).

  xa_PA holds [x, ||x||^2] per row (padded rows: x = 0, ||x||^2 = inf), so the Euclidean
  score ||r||^2 - 2 q.r of a whole block is one matmul of [-2q, 1] with xa's rows. Self is
  not masked in the (q, ref_block) scores: k + 1 candidates are kept and self is removed
  from them at the end.
  """
  r, d, m = p.r, xa_PA.shape[1] - 1, p.k + 1
  qa = lax.dynamic_slice_in_dim(xa_PA, start, p.q)
  q_QD = qa[:, :d]
  q_aug = jnp.concatenate([-2.0 * q_QD, jnp.ones((p.q, 1), xa_PA.dtype)], axis=1)
  qidx_Q = start + jnp.arange(p.q, dtype=jnp.int32)

  def one_ref_block(b):
    # one block: a static slice (a dynamic one was copied for every query block)
    ref_RA = (xa_PA[:r] if p.n_ref_blocks == 1
              else lax.dynamic_slice_in_dim(xa_PA, b * r, r))
    ridx_R = b * r + jnp.arange(r, dtype=jnp.int32)
    if metric == "euclidean":
      s = q_aug @ ref_RA.T
    else:
      s = jnp.max(jnp.abs(q_QD[:, None, :] - ref_RA[None, :, :d]), axis=-1)
      s = jnp.where(ridx_R[None, :] >= p.n, jnp.inf, s)
    return _block_select(s, ridx_R, m, p.c)

  if p.n_ref_blocks == 1:
    best_s, best_i = one_ref_block(0)
  else:
    def body(carry, b):
      s_new, i_new = one_ref_block(b)
      s_cat = jnp.concatenate([carry[0], s_new], axis=1)
      i_cat = jnp.concatenate([carry[1], i_new], axis=1)
      neg, pos = lax.top_k(-s_cat, m)
      return (-neg, jnp.take_along_axis(i_cat, pos, axis=1)), None

    init = (jnp.full((p.q, m), jnp.inf, xa_PA.dtype), jnp.zeros((p.q, m), jnp.int32))
    (best_s, best_i), _ = lax.scan(body, init, jnp.arange(p.n_ref_blocks, dtype=jnp.int32))

  # Exact distances of the k + 1 candidates, sorted; then drop self (or, if a point has
  # more than k exact duplicates and self was not kept, the last candidate).
  diff = q_QD[:, None, :] - xa_PA[best_i, :d]
  if metric == "euclidean":
    dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
  else:
    dist = jnp.max(jnp.abs(diff), axis=-1)
  dist, idx = lax.sort_key_val(dist, best_i, dimension=1)
  is_self = idx == qidx_Q[:, None]
  drop = jnp.where(is_self.any(axis=1), jnp.argmax(is_self, axis=1), p.k)
  j = jnp.arange(p.k)[None, :]
  src = j + (j >= drop[:, None])
  return jnp.take_along_axis(dist, src, axis=1), jnp.take_along_axis(idx, src, axis=1)


@functools.partial(jax.jit, static_argnames=("p", "metric", "mesh"))
def _knn_impl(xa_PA, p: Plan, metric: str, mesh: Mesh | None = None):
  """(n_dev * blocks_per_dev, q, k) distances and indices. Each device maps over its own
  query blocks, sliced from its replica of the points. With a mesh this runs under
  shard_map: the SPMD partitioner would otherwise all-gather the top_k operands."""
  def per_device(xa_PA):
    dev = 0 if mesh is None else lax.axis_index(DATA)
    starts = (dev * p.blocks_per_dev + jnp.arange(p.blocks_per_dev, dtype=jnp.int32)) * p.q
    return lax.map(lambda s: _query_block(s, xa_PA, p, metric), starts)

  if mesh is None:
    return per_device(xa_PA)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=P(), out_specs=P(DATA),
                          check_vma=False)
  return sharded(xa_PA)


def _n_pad(p: Plan) -> int:
  return max(p.n_ref_blocks * p.r, p.n_dev * p.blocks_per_dev * p.q)


def _layout_core(x_ND, p: Plan):
  """[x - mean, ||x - mean||^2] padded to whole blocks with rows [0, inf]: one (n_pad, d+1)
  array serves as queries and references."""
  x = x_ND - jnp.mean(x_ND, axis=0, keepdims=True)
  sqn = jnp.sum(x * x, axis=1, keepdims=True)
  pad = _n_pad(p) - p.n
  fill = jnp.concatenate([jnp.zeros((pad, x.shape[1]), x.dtype),
                          jnp.full((pad, 1), jnp.inf, x.dtype)], axis=1)
  return jnp.concatenate([jnp.concatenate([x, sqn], axis=1), fill], axis=0)


def _layout(x_ND, p: Plan, mesh: Mesh | None):
  """_layout_core, replicated over the mesh."""
  if mesh is None:
    return jax.jit(_layout_core, static_argnums=1)(x_ND, p)
  rep = NamedSharding(mesh, P())
  return jax.jit(_layout_core, static_argnums=1, out_shardings=rep)(x_ND, p)


def knn(x, k: int, metric: str = "euclidean", mesh: Mesh | None = None,
        query_block: int = QUERY_BLOCK, ref_block: int = REF_BLOCK,
        group: int = GROUP) -> Knn:
  """Exact k nearest neighbours of every row of x among the other rows.

  x: (N, d) NumPy or JAX array, finite. metric: 'euclidean' or 'maxnorm' (Chebyshev).
  mesh: shard the query blocks over its 'data' axis (references replicated); None runs
  on the default device. Returns Knn(dist_NK, idx_NK), sorted by distance, self excluded;
  duplicates of a point appear as neighbours at distance 0.
  """
  check_metric(metric)
  x = check_points(x, min_n=2)
  check_k(k, x.shape[0])
  return _knn_run(x, k, metric, mesh, query_block, ref_block, group)


@functools.partial(jax.jit, static_argnames=("p", "metric", "mesh"))
def knn_program(x_ND, p: Plan, metric: str, mesh: Mesh | None):
  """Layout, neighbour search, unpadding and the zero-distance count in one program."""
  xa = _layout_core(x_ND, p)
  if mesh is not None:
    xa = lax.with_sharding_constraint(xa, NamedSharding(mesh, P()))
  dist, idx = _knn_impl(xa, p=p, metric=metric, mesh=mesh)
  dist, idx = dist.reshape(-1, p.k)[:p.n], idx.reshape(-1, p.k)[:p.n]
  return Knn(dist, idx, jnp.sum(dist[:, 0] == 0))


def _knn_run(x, k: int, metric: str, mesh: Mesh | None, query_block: int = QUERY_BLOCK,
             ref_block: int = REF_BLOCK, group: int = GROUP) -> Knn:
  n, d = x.shape
  check_metric(metric)
  n_dev = 1 if mesh is None else int(mesh.shape[DATA])
  p = plan(n, k, d, metric, n_dev, query_block, ref_block, group)
  xj = jnp.asarray(x)
  if not jnp.issubdtype(xj.dtype, jnp.floating):
    xj = xj.astype(jnp.float32)
  return knn_program(xj, p=p, metric=metric, mesh=mesh)
