"""Multifractal spectra of networks: sandbox, NeuroMFA node-centred, box covering.

Shared core: a matrix logp_KR = log p_k(r) (K centres or nodes, R radii), a weight per
radius (1 inside the declared fit window, 0 outside; no dynamic shapes) and a weight per
node. For each q,

  ln Z_q(r) = logsumexp_k((q + shift) * logp_k(r))      (never power-then-log),
  tau(q)    = weighted least-squares slope of ln Z_q(r) against ln r, with its R^2,

shift = -1 for the sandbox (Liu, Yu & Anh, Chaos 25:023103, 2015: <(M/N)^(q-1)> ~ r^tau)
and 0 for NeuroMFA / NMFA (sum_i p_i(r)^q). alpha(q) = dtau/dq exactly by jax.jvp (forward mode), and
also by the released code's forward differences; f = q*alpha - tau. With a common
normaliser c_i = N on a connected graph tau_NeuroMFA(q) = tau_sandbox(q + 1).

Paper-compatible mode (`paper_spectrum`) reproduces NeuroMFA's released `wnfd_llm`:
one-hop out-distances with 1 < d <= T, nodes with > 10 of them, integer radii
R = unique round(d) over kept nodes, N_i(r) = 1 + #{round(d) <= r}, p_i = N_i(r)/N_i(max R),
OLS over all r in R.

Box covering (`box_covering_dimension`): greedy colouring, compact-box burning and
maximum-excluded-mass burning on balls from truncated Dijkstra (host-side NumPy/SciPy;
these algorithms are sequential greedy choices).
"""

from __future__ import annotations

import heapq

import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxcode.estimators import graph
from jaxcode.errors import ConfigError, increasing

# The released code's q grid: -3.0, -2.9, ..., 3.0.
PAPER_QS = np.round(np.arange(-30, 31) / 10.0, 1)
PAPER_MIN_EDGES = 10


@chex.dataclass(frozen=True)
class Spectrum:
  """A multifractal spectrum over qs.

  tau, dims (tau/(q-1); at q = 1 the information dimension dtau/dq), alpha (exact,
  autodiff), f = q*alpha - tau, r2 (fit quality per q); alpha_fd / f_fd on qs[:-1] by
  the released code's forward differences; alpha0 (alpha at q = 0 for NeuroMFA, the
  peak of f), width = max alpha - min alpha, and the same two by forward differences.
  """
  qs: chex.Array
  tau: chex.Array
  dims: chex.Array
  alpha: chex.Array
  f: chex.Array
  r2: chex.Array
  alpha_fd: chex.Array
  f_fd: chex.Array
  alpha0: chex.Array
  width: chex.Array
  alpha0_fd: chex.Array
  width_fd: chex.Array


# ------------------------------------------------------------------ checks


def check_qs(qs) -> np.ndarray:
  return increasing("qs", qs)


def check_window(radii, window=None) -> tuple[np.ndarray, np.ndarray]:
  """Radius grid and 0/1 fit weights; the window must hold >= 2 positive radii."""
  r = increasing("radii", radii)
  lo, hi = (-np.inf, np.inf) if window is None else window
  w = (r >= lo) & (r <= hi) & (r > 0)
  if w.sum() < 2:
    raise ConfigError(f"radius window {window} over radii {r.tolist()}: expected at least "
                      f"2 positive radii inside it")
  return r, w.astype(np.float64)


# ------------------------------------------------------------------ core


def wls(x_R, y_R, w_R):
  """Weighted least-squares slope and R^2 of y on x (w = 0 entries ignored).

  R^2 is 1 where y is constant up to rounding (tau = 0 at sandbox q = 1, NeuroMFA q = 0).
  """
  sw = w_R.sum()
  xm = (w_R * x_R).sum() / sw
  ym = (w_R * y_R).sum() / sw
  xc = jnp.where(w_R > 0, x_R - xm, 0.0)
  yc = jnp.where(w_R > 0, y_R - ym, 0.0)
  sxx = (w_R * xc * xc).sum()
  sxy = (w_R * xc * yc).sum()
  syy = (w_R * yc * yc).sum()
  slope = sxy / sxx
  # y constant up to rounding (tau = 0: sandbox q = 1, NeuroMFA q = 0): an exact fit, R^2 = 1
  eps = 10.0 * jnp.finfo(y_R.dtype).eps
  flat = syy <= eps * eps * sw * (ym * ym + 1.0)
  r2 = jnp.where(flat, 1.0, sxy * sxy / (sxx * jnp.where(flat, 1.0, syy)))
  return slope, r2


def _log_z(q, logp_KR, node_w_K, shift):
  log_w = jnp.where(node_w_K > 0, jnp.log(jnp.where(node_w_K > 0, node_w_K, 1.0)), -jnp.inf)
  return jax.nn.logsumexp((q + shift) * logp_KR + log_w[:, None], axis=0)


def _spectrum_core(logp_KR, x_R, w_R, node_w_K, qs_Q, shift: float) -> "Spectrum":
  def tau_r2(q):
    return wls(x_R, _log_z(q, logp_KR, node_w_K, shift), w_R)

  # tau(q_j) depends on q_j only, so one forward-mode pass with unit tangents gives
  # alpha_j = dtau/dq exactly; q = 0 is appended for alpha0.
  q_ext = jnp.concatenate([qs_Q, jnp.zeros(1, qs_Q.dtype)])
  (tau, r2), (alpha, _) = jax.jvp(jax.vmap(tau_r2), (q_ext,), (jnp.ones_like(q_ext),))
  return _assemble(qs_Q, tau[:-1], r2[:-1], alpha[:-1], alpha[-1], shift)


_spectrum_jit = jax.jit(_spectrum_core, static_argnums=(5,))


def spectrum_from_logp(logp_KR, radii, qs, shift: float = 0.0, window=None,
                       node_weights=None, x_R=None) -> Spectrum:
  """Spectrum from log p_k(r) on the radius grid, fit over `window` (default: all radii).

  shift = 0: NeuroMFA (sum_k p^q); shift = -1: sandbox (mean_k p^(q-1)). x defaults to ln r.
  """
  qs = check_qs(qs)
  r, w = check_window(radii, window)
  dtype = jnp.result_type(float)
  logp = jnp.asarray(logp_KR, dtype)
  chex.assert_shape(logp, (None, len(r)))
  if x_R is None:
    x_R = np.log(np.where(w > 0, r, 1.0))
  node_w = (jnp.ones(logp.shape[0], dtype) if node_weights is None
            else jnp.asarray(node_weights, dtype))
  return _spectrum_jit(logp, jnp.asarray(x_R, dtype), jnp.asarray(w, dtype), node_w,
                       jnp.asarray(qs, dtype), float(shift))


def _assemble(qs, tau, r2, alpha, alpha_at_0, shift) -> Spectrum:
  f = qs * alpha - tau
  # D = tau/(q + shift): tau(q)/(q-1) for the sandbox; for NeuroMFA (shift 0) tau(q)/q,
  # which is the sandbox D at q+1. Where the denominator is 0, tau = 0 and D = dtau/dq.
  denom = qs + shift
  is_one = jnp.abs(denom) < 1e-12
  dims = jnp.where(is_one, alpha, tau / jnp.where(is_one, 1.0, denom))
  dq = jnp.diff(qs)
  alpha_fd = jnp.diff(tau) / dq
  f_fd = qs[:-1] * alpha_fd - tau[:-1]
  alpha0 = alpha_at_0   # both conventions: f peaks at q = 0 (max f = 0 resp. D(0))
  alpha0_fd = alpha_fd[jnp.argmax(f_fd)] if alpha_fd.size else jnp.nan
  width_fd = (alpha_fd.max() - alpha_fd.min()) if alpha_fd.size else jnp.nan
  return Spectrum(qs=qs, tau=tau, dims=dims, alpha=alpha, f=f, r2=r2, alpha_fd=alpha_fd,
                  f_fd=f_fd, alpha0=alpha0, width=alpha.max() - alpha.min(),
                  alpha0_fd=alpha0_fd, width_fd=width_fd)


# ------------------------------------------------------------------ estimators on counts


def sandbox_from_counts(counts_KR, radii, n_nodes: int, qs, window=None) -> Spectrum:
  """Sandbox spectrum from ball masses M_k(r) (centre included) of K centres; M0 = N."""
  counts = jnp.asarray(counts_KR, jnp.result_type(float))
  if np.any(np.asarray(counts_KR) < 1):
    raise ConfigError("counts: expected ball masses >= 1 (the centre counts itself)")
  logp = jnp.log(counts) - jnp.log(float(n_nodes))
  return spectrum_from_logp(logp, radii, qs, shift=-1.0, window=window)


def neuromfa_from_counts(counts_KR, radii, qs, normaliser="node", n_nodes: int | None = None,
                         window=None, node_weights=None) -> Spectrum:
  """NeuroMFA/NMFA node-centred spectrum: Z_q(r) = sum_i p_i(r)^q, p_i = N_i(r)/c_i.

  normaliser 'node': c_i = N_i at the largest radius of the grid (the released code);
  'global': c_i = n_nodes (then tau(q) = sandbox tau(q+1) on a connected graph).
  """
  counts = jnp.asarray(counts_KR, jnp.result_type(float))
  if np.any(np.asarray(counts_KR) < 1):
    raise ConfigError("counts: expected ball counts >= 1 (the centre counts itself)")
  if normaliser == "node":
    norm = counts[:, -1:]
  elif normaliser == "global":
    if n_nodes is None or n_nodes < 1:
      raise ConfigError(f"n_nodes={n_nodes}: expected the node count for normaliser='global'")
    norm = jnp.asarray(float(n_nodes), counts.dtype)
  else:
    raise ConfigError(f"normaliser={normaliser!r}: expected 'node' or 'global'")
  logp = jnp.log(counts) - jnp.log(norm)
  return spectrum_from_logp(logp, radii, qs, shift=0.0, window=window, node_weights=node_weights)


# ------------------------------------------------------------------ paper-compatible mode


def paper_logp(hist_NT):
  """Released-code quantities from one-hop histograms (N, T+1) (graph.one_hop_histograms).

  Returns logp (N, T+1) = ln N_i(r) - ln N_i(r_max), the 0/1 radius weights (r in R),
  the 0/1 node weights (> 10 valid edges) and x = ln(r/r_max) (0 off R).
  """
  dtype = jnp.result_type(float)
  h = jnp.asarray(hist_NT)
  total = h.sum(axis=1)
  keep = total > PAPER_MIN_EDGES
  cnt = 1.0 + jnp.cumsum(h, axis=1).astype(dtype)
  logp = jnp.log(cnt) - jnp.log(1.0 + total.astype(dtype))[:, None]
  x, w_R = _paper_radii(h, keep)
  return logp, w_R, keep.astype(dtype), x


def _paper_radii(h, keep):
  dtype = jnp.result_type(float)
  r_used = jnp.any((h > 0) & keep[:, None], axis=0)
  r = jnp.arange(h.shape[1], dtype=dtype)
  r_max = jnp.max(jnp.where(r_used, r, 0.0))
  x = jnp.where(r_used, jnp.log(jnp.where(r_used, r, 1.0) / r_max), 0.0)
  return x, r_used.astype(dtype)


def paper_grouped(hist_NT, qs_Q, A: int):
  """Released-code tau(q) by grouping nodes on their integer counts (a = N_i(r), b = N_i(r_max)).

  Z_q(r) = sum_i (a_ir / b_i)^q = sum_{a,b} C_r[a, b] a^q b^-q, with C_r[a, b] the number of
  kept nodes with counts (a, b) at radius r: one scatter-add and one matmul, the exact
  regrouping of the per-node sum. Both factors are centred on sqrt(A) so that each stays
  within A^(|q|/2) (paper_spectrum checks the range). alpha = dtau/dq by forward-mode
  autodiff (tau(q_j) depends on q_j only).
  """
  dtype = qs_Q.dtype
  h = hist_NT
  total = h.sum(axis=1)
  keep = total > PAPER_MIN_EDGES
  x_R, w_R = _paper_radii(h, keep)
  T1 = h.shape[1]
  a = jnp.minimum(jnp.cumsum(h, axis=1), A - 1)                        # a - 1, (N, T1)
  b = jnp.minimum(total, A - 1)                                        # b - 1, (N,)
  flat = (jnp.arange(T1)[None, :] * A + a) * A + b[:, None]
  w = jnp.broadcast_to(keep[:, None], flat.shape).astype(dtype)
  C = jnp.zeros(T1 * A * A, dtype).at[flat.ravel()].add(w.ravel()).reshape(T1, A, A)
  ln_v = jnp.log(jnp.arange(1, A + 1, dtype=dtype)) - 0.5 * jnp.log(jnp.asarray(A, dtype))

  def tau_r2(q_Q):
    e_a = jnp.exp(ln_v[:, None] * q_Q[None, :])                        # (A, Q)
    e_b = jnp.exp(-ln_v[:, None] * q_Q[None, :])
    g = jnp.einsum("rab,aq->rbq", C, e_a)
    log_z = jnp.log(jnp.einsum("rbq,bq->qr", g, e_b))                   # (Q, T1)
    return jax.vmap(lambda y: wls(x_R, y, w_R))(log_z)

  q_ext = jnp.concatenate([qs_Q, jnp.zeros(1, dtype)])
  (tau, r2), (alpha, _) = jax.jvp(tau_r2, (q_ext,), (jnp.ones_like(q_ext),))
  spec = _assemble(qs_Q, tau[:-1], r2[:-1], alpha[:-1], alpha[-1], 0.0)
  return spec, keep.sum(), w_R.sum()


_paper_grouped_jit = jax.jit(paper_grouped, static_argnums=(2,))


@jax.jit
def _paper_core(hist_NT, qs_Q):
  """Released-code spectrum by the general logsumexp route (any q range)."""
  logp, w_R, node_w, x_R = paper_logp(hist_NT)
  return _spectrum_core(logp, x_R, w_R, node_w, qs_Q, 0.0), node_w.sum(), w_R.sum()


def grouped_is_safe(qs, A: int, dtype) -> bool:
  """Whether A^(|q|/2) stays far inside the float range of dtype."""
  limit = 40.0 if jnp.dtype(dtype) == jnp.float32 else 300.0
  return float(np.max(np.abs(qs))) * 0.5 * np.log(A) < limit


def paper_spectrum(hist_NT, qs=PAPER_QS, method: str = "auto",
                   max_count: int | None = None) -> Spectrum:
  """NeuroMFA's released one-hop spectrum from histograms of graph.one_hop_histograms.

  method 'grouped' (counts regrouped into a matmul, fast), 'logsumexp' (per-node
  logsumexp of q log p), or 'auto' (grouped when its float range allows). max_count: an
  upper bound on a node's number of distances (e.g. the widest kernel's out-degree); it
  fixes the grouped path's table size, so series of equal shapes compile once.
  """
  qs = check_qs(qs)
  h = jnp.asarray(hist_NT)
  if h.ndim != 2 or h.shape[1] < 3:
    raise ConfigError(f"hist shape {h.shape}: expected (nodes, T+1) with T >= 2")
  if method not in ("auto", "grouped", "logsumexp"):
    raise ConfigError(f"method={method!r}: expected 'auto', 'grouped' or 'logsumexp'")
  dtype = jnp.result_type(float)
  q = jnp.asarray(qs, dtype)
  most = int(np.asarray(h.sum(axis=1)).max())
  if max_count is not None and most > int(max_count):
    raise ConfigError(f"max_count={max_count}: a node has {most} distances, expected an upper bound")
  A = (most if max_count is None else int(max_count)) + 1
  if method == "grouped" or (method == "auto" and grouped_is_safe(qs, A, dtype)):
    spec, n_keep, n_r = _paper_grouped_jit(h, q, A)
  else:
    spec, n_keep, n_r = _paper_core(h, q)
  if int(n_keep) == 0 or int(n_r) < 2:
    raise ConfigError(f"paper mode kept {int(n_keep)} nodes and {int(n_r)} radii: expected "
                      f"nodes with > {PAPER_MIN_EDGES} distances in (1, T] over >= 2 radii")
  return spec


# ------------------------------------------------------------------ public API: sandbox


def _centres(n: int, centres, seed: int) -> np.ndarray:
  if centres is None:
    return np.arange(n)
  if np.ndim(centres) == 0:
    k = int(centres)
    if k < 1:
      raise ConfigError(f"centres={k}: expected a positive number of centres")
    return np.sort(np.random.default_rng(seed).permutation(n)[:min(k, n)])
  c = np.asarray(centres, np.int64)
  if c.size == 0 or c.min() < 0 or c.max() >= n:
    raise ConfigError(f"centres: expected node ids in [0, {n})")
  return c


def sandbox_spectrum(adjacency, qs, radii, centres=None, seed: int = 0,
                     block: int = 256, method: str = "scipy", mesh=None) -> Spectrum:
  """Sandbox spectrum (Liu et al. 2015) of a scipy sparse graph of edge lengths.

  radii: the fit window (ball radii, >= 2 of them); centres: None (all nodes), a count
  (seeded random sample) or explicit ids; method: 'scipy' (truncated Dijkstra on the
  host) or 'jax' (device Bellman-Ford, sharded over `mesh`). Returns a Spectrum with
  tau, dims (D(q), D(1) the information dimension), alpha, f.
  """
  qs = check_qs(qs)
  r, _ = check_window(radii)
  a = graph.check_adjacency(adjacency)
  c = _centres(a.shape[0], centres, seed)
  counts = graph.sparse_ball_counts(a, r, c, block=block, method=method, mesh=mesh)
  return sandbox_from_counts(counts, r, a.shape[0], qs)


# ------------------------------------------------------------------ box covering


def _row(b: sp.csr_matrix, i: int) -> np.ndarray:
  return b.indices[b.indptr[i]:b.indptr[i + 1]]


def _greedy_colouring(balls: sp.csr_matrix, order: np.ndarray) -> int:
  """Colours of the dual graph (i ~ j iff d >= l_B); returns the number of colours."""
  n = balls.shape[0]
  colour = np.full(n, -1, np.int64)
  count = np.zeros(n + 1, np.int64)
  n_col = 0
  for i in order:
    cs = colour[_row(balls, i)]
    cs = cs[cs >= 0]
    local = np.bincount(cs, minlength=n_col)[:n_col]
    usable = np.flatnonzero(local == count[:n_col])
    c = usable[0] if usable.size else n_col
    n_col = max(n_col, c + 1)
    colour[i] = c
    count[c] += 1
  return n_col


def _compact_box_burning(balls: sp.csr_matrix, order: np.ndarray, rng) -> int:
  n = balls.shape[0]
  covered = np.zeros(n, bool)
  boxes = 0
  for p in order:
    if covered[p]:
      continue
    boxes += 1
    cand = _row(balls, p)
    cand = cand[~covered[cand]]
    covered[p] = True
    cand = cand[cand != p]
    while cand.size:
      q = cand[rng.integers(cand.size)]
      covered[q] = True
      cand = np.intersect1d(cand[cand != q], _row(balls, q), assume_unique=True)
  return boxes


def _max_excluded_mass(balls: sp.csr_matrix) -> int:
  n = balls.shape[0]
  uncovered = np.ones(n, bool)
  sizes = np.diff(balls.indptr)
  heap = [(-int(s), i) for i, s in enumerate(sizes)]
  heapq.heapify(heap)
  centres = 0
  left = n
  while left > 0:
    neg, i = heapq.heappop(heap)
    mass = int(uncovered[_row(balls, i)].sum())
    if heap and mass < -heap[0][0]:
      heapq.heappush(heap, (-mass, i))
      continue
    centres += 1
    row = _row(balls, i)
    left -= int(uncovered[row].sum())
    uncovered[row] = False
  return centres


BOX_METHODS = ("gc", "cbb", "memb")


def box_counts(adjacency, sizes, method: str = "memb", repeats: int = 1, seed: int = 0):
  """Box counts N_B(l_B) for each box size (min over `repeats` random node orders).

  gc, cbb: a box holds nodes with pairwise d < l_B. memb: balls of radius
  r_B = (l_B - 1)/2 around greedily chosen centres of maximum excluded mass.
  """
  a = graph.check_adjacency(adjacency)
  s = np.asarray(sizes, np.float64).ravel()
  if s.size < 2 or np.any(np.diff(s) <= 0) or s[0] < 1:
    raise ConfigError(f"sizes={s.tolist()}: expected >= 2 increasing box sizes >= 1")
  if method not in BOX_METHODS:
    raise ConfigError(f"method={method!r}: expected one of {BOX_METHODS}")
  if repeats < 1:
    raise ConfigError(f"repeats={repeats}: expected >= 1")
  rng = np.random.default_rng(seed)
  n = a.shape[0]
  radii = (s - 1) / 2.0 if method == "memb" else s
  families = graph.sparse_balls(a, radii, strict=method != "memb")
  out = []
  for balls in families:
    if method == "memb":
      out.append(_max_excluded_mass(balls))
      continue
    best = n
    for _ in range(repeats):
      order = rng.permutation(n)
      nb = (_greedy_colouring(balls, order) if method == "gc"
            else _compact_box_burning(balls, order, rng))
      best = min(best, nb)
    out.append(best)
  return np.asarray(out)


def box_covering_dimension(adjacency, sizes, method: str = "memb", repeats: int = 1,
                           seed: int = 0) -> float:
  """d_B = -slope of ln N_B(l_B) against ln l_B over the given box sizes."""
  s = np.asarray(sizes, np.float64).ravel()
  nb = box_counts(adjacency, s, method, repeats, seed)
  slope = np.polyfit(np.log(s), np.log(nb), 1)[0]
  return float(-slope)
