"""Distances and ball-growth counts on networks.

Three routes, all ending in ball counts N_i(r) = #{j : d(i, j) <= r} on a declared
radius grid, accumulated per block of sources so that no N x N matrix is kept:

- one hop (the paper-compatible mode of NeuroMFA's released code): each source's
  out-distances |w|^p to the next layer only, binned on the integer grid 0..T;
- layered networks (neurons of successive layers, edges only between adjacent layers):
  exact multi-hop shortest paths by min-plus (tropical) matrix products, one product
  per layer, path length lam * sum |w|^p + gamma * hops; directed (one forward sweep,
  exact on the DAG) or undirected (forward and backward sweeps in a lax.while_loop until
  nothing changes). Sources are mapped over in blocks and each block is sharded over
  the mesh's 'data' axis;
- general sparse graphs (validation networks): truncated Dijkstra from scipy per block
  of centres, then the same JAX histogram.

A layered network is padded to a common width n: `lengths_LNN[l, a, b]` is the length
of the edge from node a of layer l to node b of layer l+1 (inf: no edge), and
`mask_MN` (M = L+1 layers) marks real nodes. Global node id = layer * n + index.
"""

from __future__ import annotations

import functools
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from scipy.sparse import csgraph

from jaxcode import parallel
from jaxcode.errors import ConfigError, increasing

# ------------------------------------------------------------------ edge lengths


def edge_lengths(w, p: float = -1.0, lam: float = 1.0, gamma: float = 0.0):
  """lam * |w|^p + gamma for nonzero finite w, inf where w == 0 (no edge).

  NumPy in, NumPy out (host-side graph building); JAX arrays stay in JAX. p = -1 is
  computed as a division (1/|w|), bit-identical between the two.
  """
  xp = np if isinstance(w, np.ndarray) else jnp
  a = xp.abs(w)
  safe = xp.where(a > 0, a, 1.0)
  base = 1.0 / safe if p == -1 else safe ** p
  return xp.where(a > 0, lam * base + gamma, xp.inf)


def layered_from_kernels(kernels: Sequence, p: float = -1.0, lam: float = 1.0,
                         gamma: float = 0.0, dtype=jnp.float32):
  """Pads a chain of kernels W_l (n_l, n_{l+1}) into (lengths_LNN, mask_MN), on the host.

  Raises ConfigError when successive kernels do not chain (n_{l+1} mismatch).
  """
  if len(kernels) == 0:
    raise ConfigError("kernels=[]: expected at least one 2-D kernel")
  shapes = [tuple(np.shape(k)) for k in kernels]
  for l, s in enumerate(shapes):
    if len(s) != 2:
      raise ConfigError(f"kernels[{l}] has shape {s}: expected a 2-D kernel")
  for l in range(len(shapes) - 1):
    if shapes[l][1] != shapes[l + 1][0]:
      raise ConfigError(f"kernels[{l}] {shapes[l]} and kernels[{l+1}] {shapes[l+1]} "
                        f"do not chain: expected n_out of one == n_in of the next")
  widths = [shapes[0][0]] + [s[1] for s in shapes]
  n = max(widths)
  np_dtype = np.dtype(jnp.dtype(dtype).name)
  lengths = np.full((len(kernels), n, n), np.inf, np_dtype)
  for l, (k, (a, b)) in enumerate(zip(kernels, shapes)):
    lengths[l, :a, :b] = edge_lengths(np.asarray(k, np_dtype), p, lam, gamma)
  mask = np.zeros((len(widths), n), bool)
  for l, w in enumerate(widths):
    mask[l, :w] = True
  return jnp.asarray(lengths), jnp.asarray(mask)


def layered_to_sparse(lengths_LNN, mask_MN) -> sp.csr_matrix:
  """The directed graph of a padded layered network as a scipy CSR matrix (N = M*n).

  Entries are edge lengths (explicit zeros are not allowed: use a positive length).
  """
  lengths = np.asarray(lengths_LNN, np.float64)
  L, n, _ = lengths.shape
  rows, cols, vals = [], [], []
  for l in range(L):
    a, b = np.nonzero(np.isfinite(lengths[l]))
    rows.append(l * n + a)
    cols.append((l + 1) * n + b)
    vals.append(lengths[l][a, b])
  rows, cols, vals = map(np.concatenate, (rows, cols, vals))
  return sp.csr_matrix((vals, (rows, cols)), shape=((L + 1) * n, (L + 1) * n))


# ------------------------------------------------------------------ min-plus


def minplus(d_BN, len_NM, chunk: int | None = None):
  """Tropical product (d ⊗ len)_bm = min_k d_bk + len_km, optionally chunked over k.

  The sum is formed left to right (distance so far + edge), as Dijkstra does, so
  equal paths give bit-equal lengths.
  """
  n = d_BN.shape[1]
  len_MN = len_NM.T          # reduce over the contiguous last axis (about 5x faster on CPU)
  if chunk is None or chunk >= n:
    return jnp.min(d_BN[:, None, :] + len_MN[None, :, :], axis=2)
  if n % chunk:
    raise ConfigError(f"chunk={chunk}: expected a divisor of the width {n}")

  def body(i, acc):
    a = lax.dynamic_slice_in_dim(d_BN, i * chunk, chunk, 1)
    b = lax.dynamic_slice_in_dim(len_MN, i * chunk, chunk, 1)
    return jnp.minimum(acc, jnp.min(a[:, None, :] + b[None], axis=2))

  init = jnp.full((d_BN.shape[0], len_NM.shape[1]), jnp.inf, d_BN.dtype)
  return lax.fori_loop(0, n // chunk, body, init)


def _forward(d_BMN, lengths_LNN, chunk, start=None):
  """One forward sweep: layer l+1 <- min(layer l+1, layer l ⊗ len_l), l = 0..L-1.

  Layers l < start (a traced int: no source lies below it) are skipped by lax.cond.
  """
  def step(prev_BN, xs):
    l, cur_BN, len_NN = xs
    relax = lambda: jnp.minimum(cur_BN, minplus(prev_BN, len_NN, chunk))
    new = relax() if start is None else lax.cond(l >= start, relax, lambda: cur_BN)
    return new, new

  first = d_BMN[:, 0]
  L = lengths_LNN.shape[0]
  _, rest = lax.scan(step, first, (jnp.arange(L), jnp.moveaxis(d_BMN[:, 1:], 1, 0),
                                   lengths_LNN))
  return jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)


def _backward(d_BMN, lengths_LNN, chunk):
  """One backward sweep over transposed edges: layer l <- min(l, (l+1) ⊗ len_l^T)."""
  flipped = jnp.flip(d_BMN, 1)
  lens_T = jnp.flip(jnp.swapaxes(lengths_LNN, 1, 2), 0)
  return jnp.flip(_forward(flipped, lens_T, chunk), 1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def layered_distances(lengths_LNN, sources, directed: bool = True,
                      chunk: int | None = None, max_sweeps: int = 10_000):
  """Shortest-path lengths from `sources` (global ids) to every node: (B, M, n).

  Directed: a single forward sweep (exact on a layered DAG) that starts at the lowest
  source layer. Undirected: forward and backward sweeps in a while_loop until no
  distance changes.
  """
  L, n, _ = lengths_LNN.shape
  chex.assert_shape(lengths_LNN, (L, n, n))
  M = L + 1
  src = jnp.asarray(sources)
  chex.assert_rank(src, 1)
  B = src.shape[0]
  d0 = jnp.full((B, M * n), jnp.inf, lengths_LNN.dtype)
  d0 = d0.at[jnp.arange(B), src].set(0.0).reshape(B, M, n)
  if directed:
    return _forward(d0, lengths_LNN, chunk, start=jnp.min(src) // n)

  def sweep(d):
    return _backward(_forward(d, lengths_LNN, chunk), lengths_LNN, chunk)

  def cond(c):
    d, prev, i = c
    return jnp.logical_or(i == 0, jnp.logical_and(jnp.any(d != prev), i < max_sweeps))

  def body(c):
    d, _, i = c
    return sweep(d), d, i + 1

  d, _, _ = lax.while_loop(cond, body, (d0, d0, jnp.int32(0)))
  return d


# ------------------------------------------------------------------ histograms


def _check_radii(radii) -> np.ndarray:
  return increasing("radii", radii)


def ball_counts_from_distances(d_BN, radii_R, node_mask_N=None):
  """N_b(r_k) = #{j real : d_bj <= r_k} by one flat scatter-add histogram and a cumsum.

  O(B*N*R) compares (fused) + O(B*N) scatter; bin of d = searchsorted(radii, d, 'left'),
  so d <= r_k iff bin <= k; distances beyond the grid land in a dropped bin.
  """
  B = d_BN.shape[0]
  R = radii_R.shape[0]
  idx = jnp.searchsorted(radii_R, d_BN, side="left", method="compare_all")
  idx = idx + (R + 1) * jnp.arange(B)[:, None]
  ones = jnp.ones(d_BN.shape, jnp.int32)
  if node_mask_N is not None:
    ones = ones * node_mask_N.astype(jnp.int32)[None]
  hist = jnp.zeros(B * (R + 1), jnp.int32).at[idx.ravel()].add(ones.ravel())
  return jnp.cumsum(hist.reshape(B, R + 1)[:, :R], axis=1)


def _source_blocks(sources: np.ndarray, block: int, n_shards: int):
  """(steps, n_shards*block) padded source ids and a validity mask."""
  per_step = block * n_shards
  steps = max(1, -(-len(sources) // per_step))
  pad = steps * per_step - len(sources)
  ids = np.concatenate([sources, np.full(pad, sources[-1] if len(sources) else 0)])
  valid = np.concatenate([np.ones(len(sources), bool), np.zeros(pad, bool)])
  return ids.reshape(steps, per_step), valid.reshape(steps, per_step)


def layered_ball_counts(lengths_LNN, mask_MN, radii, sources=None, directed: bool = True,
                        block: int = 64, mesh=None, chunk: int | None = None):
  """Ball counts N_i(r) (K, R) of a layered network from each source, streamed.

  Sources default to every real node. Each lax.map step takes block * (data axis size)
  sources, sharded over the mesh's 'data' axis; only (K, R) counts are kept.
  """
  radii = _check_radii(radii)
  mask = np.asarray(mask_MN, bool)
  L, n, _ = lengths_LNN.shape
  if mask.shape != (L + 1, n):
    raise ConfigError(f"mask shape {mask.shape}: expected {(L + 1, n)} for lengths {lengths_LNN.shape}")
  if sources is None:
    sources = np.nonzero(mask.ravel())[0]
  sources = np.asarray(sources, np.int64)
  if sources.size == 0:
    raise ConfigError("sources=[]: expected at least one source node")
  if sources.min() < 0 or sources.max() >= mask.size or not mask.ravel()[sources].all():
    raise ConfigError(f"sources: expected ids of real nodes in [0, {mask.size})")
  mesh = mesh if mesh is not None else parallel.single_device_mesh()
  n_shards = mesh.shape[parallel.DATA]
  order = np.argsort(sources, kind="stable")      # layer-sorted blocks skip lower layers
  ids, valid = _source_blocks(sources[order], block, n_shards)
  counts = _layered_counts_jit(jnp.asarray(lengths_LNN), jnp.asarray(mask),
                               jnp.asarray(radii, lengths_LNN.dtype), jnp.asarray(ids),
                               directed, chunk, mesh)
  counts = np.asarray(counts).reshape(-1, len(radii))[valid.ravel()]
  out = np.empty_like(counts)
  out[order] = counts
  return out


def _layered_counts(lengths, mask, radii, ids, directed, chunk, mesh):
  shard = parallel.batch_sharding(mesh, ndim=1)
  flat_mask = mask.reshape(-1)

  def one(src):
    src = lax.with_sharding_constraint(src, shard)
    d = layered_distances(lengths, src, directed, chunk)
    d = lax.with_sharding_constraint(d, parallel.batch_sharding(mesh, ndim=3))
    return ball_counts_from_distances(d.reshape(d.shape[0], -1), radii, flat_mask)

  return lax.map(one, ids)


_layered_counts_jit = jax.jit(_layered_counts, static_argnums=(4, 5, 6))


# ------------------------------------------------------------------ one hop


@functools.partial(jax.jit, static_argnums=(1,))
def one_hop_histograms(dist_NK, T: int):
  """Released-code binning: per source, #{d : 1 < d <= T, round(d) == r}, r = 0..T.

  dist_NK holds each source's out-distances (inf or nan where no edge). Rounding is
  half-to-even as np.round. Returns int32 (N, T+1).
  """
  d = jnp.asarray(dist_NK)
  ok = (d > 1) & (d <= T)
  r = jnp.where(ok, jnp.round(jnp.where(ok, d, 0.0)), 0).astype(jnp.int32)
  return jax.vmap(lambda i, w: jnp.zeros(T + 1, jnp.int32).at[i].add(w))(r, ok.astype(jnp.int32))


def one_hop_layered_histograms(kernels: Sequence, T: int, p: float = -1.0, dtype=jnp.float32):
  """Stacked one-hop histograms (sum_l n_l, T+1) of every kernel's sources (out-stars)."""
  if int(T) < 2:
    raise ConfigError(f"T={T}: expected a distance cut-off >= 2")
  return _one_hop_stack([jnp.asarray(k, dtype) for k in kernels], int(T), float(p))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _one_hop_stack(kernels, T, p):
  return jnp.concatenate([one_hop_histograms(edge_lengths(k, p), T) for k in kernels], axis=0)


# ------------------------------------------------------------------ general sparse graphs


def check_adjacency(adjacency) -> sp.csr_matrix:
  if not sp.issparse(adjacency):
    raise ConfigError(f"adjacency of type {type(adjacency).__name__}: expected a scipy.sparse matrix")
  a = sp.csr_matrix(adjacency, dtype=np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
    raise ConfigError(f"adjacency shape {a.shape}: expected a non-empty square matrix")
  if a.nnz and (np.any(a.data <= 0) or not np.all(np.isfinite(a.data))):
    raise ConfigError("adjacency entries: expected positive finite edge lengths")
  return a


def sparse_ball_counts(adjacency, radii, centres, block: int = 256, directed: bool = False,
                       method: str = "scipy", mesh=None):
  """Ball counts (K, R) around `centres` of a scipy sparse graph of edge lengths.

  method 'scipy': per block of centres (padded to a fixed block, one compilation), scipy
  Dijkstra truncated at max(radii), so only balls are explored, then the JAX histogram of
  ball_counts_from_distances. method 'jax': Bellman-Ford relaxations over the edge list
  on the device (scatter-min, truncated at max(radii), while_loop until no change),
  blocks sharded over the mesh's 'data' axis; for accelerators. Only (block, N)
  distances live at a time.
  """
  a = check_adjacency(adjacency)
  radii = _check_radii(radii)
  centres = np.asarray(centres, np.int64)
  if centres.size == 0 or centres.min() < 0 or centres.max() >= a.shape[0]:
    raise ConfigError(f"centres: expected node ids in [0, {a.shape[0]})")
  if method == "jax":
    return _sparse_counts_jax(a, radii, centres, block, directed, mesh)
  if method != "scipy":
    raise ConfigError(f"method={method!r}: expected 'scipy' or 'jax'")
  block = max(1, min(block, len(centres)))
  r_dev = jnp.asarray(radii)
  hist = jax.jit(ball_counts_from_distances)
  out = []
  for s in range(0, len(centres), block):
    idx = centres[s:s + block]
    d = csgraph.dijkstra(a, directed=directed, indices=idx, limit=float(radii[-1]))
    if len(idx) < block:
      d = np.concatenate([d, np.full((block - len(idx), d.shape[1]), np.inf)])
    out.append(np.asarray(hist(jnp.asarray(d, r_dev.dtype), r_dev))[:len(idx)])
  return np.concatenate(out, axis=0)


def _sparse_counts_jax(a: sp.csr_matrix, radii, centres, block, directed, mesh):
  mesh = mesh if mesh is not None else parallel.single_device_mesh()
  coo = a.tocoo()
  src, dst, w = coo.row, coo.col, coo.data
  if not directed:
    src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
  dtype = jnp.result_type(float)
  block = max(1, min(block, len(centres)))
  ids, valid = _source_blocks(centres, block, mesh.shape[parallel.DATA])
  counts = _bellman_ford_counts_jit(jnp.asarray(src), jnp.asarray(dst), jnp.asarray(w, dtype),
                                    jnp.asarray(radii, dtype), jnp.asarray(ids), a.shape[0], mesh)
  return np.asarray(counts).reshape(-1, len(radii))[valid.ravel()]


def _bellman_ford_counts(src, dst, w, radii, ids, n, mesh):
  shard = parallel.batch_sharding(mesh, ndim=2)
  r_max = radii[-1]

  def one(c):
    B = c.shape[0]
    d0 = jnp.full((B, n), jnp.inf, w.dtype).at[jnp.arange(B), c].set(0.0)
    d0 = lax.with_sharding_constraint(d0, shard)

    def body(state):
      d, _, i = state
      new = d.at[:, dst].min(d[:, src] + w[None, :])
      new = jnp.where(new <= r_max, new, jnp.inf)
      return lax.with_sharding_constraint(new, shard), d, i + 1

    def cond(state):
      d, prev, i = state
      return jnp.logical_or(i == 0, jnp.any(d != prev))

    d, _, _ = lax.while_loop(cond, body, (d0, d0, jnp.int32(0)))
    return ball_counts_from_distances(d, radii)

  return lax.map(one, ids)


_bellman_ford_counts_jit = jax.jit(_bellman_ford_counts, static_argnums=(5, 6))


def sparse_balls(adjacency, radii: Sequence[float], strict: bool = False, block: int = 512,
                 directed: bool = False) -> list[sp.csr_matrix]:
  """For each radius, a boolean CSR matrix B[i, j] = d(i, j) <= r (< r if strict).

  One truncated Dijkstra pass at the largest radius; the smaller balls are thresholds
  of the same sparse distance rows.
  """
  a = check_adjacency(adjacency)
  radii = [float(r) for r in radii]
  rows = []
  for s in range(0, a.shape[0], block):
    d = csgraph.dijkstra(a, directed=directed, indices=np.arange(s, min(s + block, a.shape[0])),
                         limit=max(radii))
    d[~np.isfinite(d)] = 0.0
    d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = -1.0   # keep the centre (d = 0)
    rows.append(sp.csr_matrix(d))
  dist = sp.vstack(rows).tocsr()
  dist.data[dist.data < 0] = 0.0
  out = []
  for r in radii:
    keep = dist.data < r if strict else dist.data <= r
    b = sp.csr_matrix((keep.astype(np.int8), dist.indices.copy(), dist.indptr.copy()),
                      shape=dist.shape)
    b.eliminate_zeros()
    out.append(b)
  return out
