"""NeuroMFA benchmark (configs/bench/neuromfa.py).

1. Paper-compatible spectrum (graph.one_hop_layered_histograms + the grouped paper-mode
   core of multifractal, jitted end to end from the kernels, float32) against two
   per-node Python/NumPy implementations of the released `wnfd_llm` algorithm on the same
   sampled network in the same run: the released steps as written (per-node Counter,
   per-(node, radius) Python sums) and a faster per-node NumPy variant (searchsorted);
   ratios of median times and the max |tau difference| (float32 vs float64).
2. Multi-hop shortest paths (graph.layered_distances, directed forward sweep) on the same
   network, sources sorted by layer in blocks (each block's sweep starts at its lowest
   layer): relaxations per second (executed on the padded layers, and useful = real
   edges downstream of each source), and as a fraction of the measured matmul rate (one
   relaxation = one add + one min = 2 ops).

The network follows the released model2network.py layout per block: x (S) -> QKV (3S)
-> heads (S, a synthetic 0/1 matrix, distance 1) -> attention out (S) -> MLP hidden (2S)
-> next x. Weights are i.i.d. N(0, sigma^2) drawn at the sampled size (distributionally
the same as sampling rows/columns of a full i.i.d. matrix of width `width`); the
QKV -> heads 0/1 pattern uses indices sampled from `width` as the released code does.
"""

from __future__ import annotations

import time
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxcode.bench import common
from jaxcode.estimators import graph, multifractal as mf
from jaxcode.errors import ConfigError


def sampled_network(S: int, blocks: int, width: int, sigma: float, seed: int) -> list[np.ndarray]:
  """Kernels (n_l, n_{l+1}) of the released code's sampled NIN with synthetic weights."""
  if S > width:
    raise ConfigError(f"S={S}: expected at most width={width} neurons per layer")
  rng = np.random.default_rng(seed)
  kernels = []
  for _ in range(blocks):
    heads = rng.choice(width, S, replace=False)
    qkv_rows = np.concatenate([heads, heads + width, heads + 2 * width])
    # released synthetic QKV -> head matrix vstack(eye(d), ones(2d, d)), sampled rows/cols
    syn = np.where(qkv_rows[:, None] < width, (qkv_rows[:, None] == heads[None]), 1.0)
    kernels += [rng.normal(0, sigma, (S, 3 * S)), syn.astype(np.float64),
                rng.normal(0, sigma, (S, S)), rng.normal(0, sigma, (S, 2 * S)),
                rng.normal(0, sigma, (2 * S, S))]
  return kernels


def out_distance_lists(kernels: list[np.ndarray]) -> list[np.ndarray]:
  """Per source node, its one-hop out-distances 1/|w| (what the released pipeline stores)."""
  lists = []
  for k in kernels:
    for row in k:
      a = np.abs(row)
      lists.append(1.0 / a[a > 0])
  return lists


def _fit(R_R: np.ndarray, z_QR: np.ndarray) -> np.ndarray:
  """tau(q): the OLS slope of ln Z_q(r) against ln(r / r_max), per q."""
  x = np.log(R_R / R_R.max())
  return np.array([stats.linregress(x, np.log(z)).slope for z in z_QR])


def reference_released(dist_lists: list[np.ndarray], T: int, qs: np.ndarray) -> np.ndarray:
  """The released algorithm step by step, per node in Python (notes §1.3); returns tau(q).

  Per node: the distances in (1, T] by a list comprehension, a Counter of their rounded
  values; per (node, radius): 1 + the number of rounded distances <= radius; then
  Z_q(r) = sum_i (N_i(r)/N_i(r_max))^q with NumPy per q, OLS slope per q.
  """
  nodes, radii = [], set()
  for d in dist_lists:
    grow = [x for x in d if 1 < x <= T]
    if len(grow) > mf.PAPER_MIN_EDGES:
      c = Counter(np.round(grow).tolist())
      radii.update(c)
      nodes.append(c)
  R = np.array(sorted(radii))
  n_ir = np.ones((len(nodes), len(R)))
  for i, c in enumerate(nodes):
    for j, r in enumerate(R):
      n_ir[i, j] += sum(v for key, v in c.items() if key <= r)
  z = np.stack([np.power(n_ir / n_ir[:, -1:], q).sum(0) for q in qs])
  return _fit(R, z)


def reference_vectorised(dist_lists: list[np.ndarray], T: int, qs: np.ndarray) -> np.ndarray:
  """A faster per-node NumPy variant (sorted distances + searchsorted per node)."""
  grows = []
  for d in dist_lists:
    g = d[(d > 1) & (d <= T)]
    if len(g) > mf.PAPER_MIN_EDGES:
      grows.append(np.sort(np.round(g)))
  R = np.unique(np.concatenate(grows))
  z = np.zeros((len(qs), len(R)))
  for g in grows:
    n_r = 1.0 + np.searchsorted(g, R, side="right")
    z += (n_r / n_r[-1])[None, :] ** qs[:, None]
  return _fit(R, z)


def _timed(fn, repeats: int):
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def paper_section(kernels: list[np.ndarray], T: int, repeats: int,
                  reference_repeats: int) -> dict:
  """1. The paper-compatible spectrum (jitted JAX) against the two NumPy references."""
  qs_Q = mf.PAPER_QS
  k_dev = [jnp.asarray(k, jnp.float32) for k in kernels]
  q_dev = jnp.asarray(qs_Q, jnp.float32)
  A = 1 + max(k.shape[1] for k in kernels)          # bound on 1 + out-degree
  if not mf.grouped_is_safe(qs_Q, A, jnp.float32):
    raise ConfigError(f"q range {qs_Q.min()}..{qs_Q.max()} too wide for the grouped float32 "
                      "path")

  @jax.jit
  def paper(ks, q):
    spec, n_keep, _ = mf.paper_grouped(graph.one_hop_layered_histograms(ks, T, -1.0), q, A)
    return spec.tau, spec.alpha0, spec.width, spec.alpha0_fd, spec.width_fd, n_keep

  res = common.block(paper(k_dev, q_dev))
  t_jax = common.time_fn(lambda: paper(k_dev, q_dev), repeats=repeats)
  dist_lists = out_distance_lists(kernels)
  t_ref, tau_ref_Q = _timed(lambda: reference_released(dist_lists, T, qs_Q), reference_repeats)
  t_vec, tau_vec_Q = _timed(lambda: reference_vectorised(dist_lists, T, qs_Q),
                            reference_repeats)
  tau_jax_Q = np.asarray(res[0], np.float64)
  return dict(
      paper_mfa_nodes=int(res[5]), paper_jax_s=t_jax,
      paper_released_reference_s=t_ref, paper_speedup_vs_released=t_ref / t_jax,
      paper_vectorised_reference_s=t_vec, paper_speedup_vs_vectorised=t_vec / t_jax,
      paper_max_abs_tau_diff_released=float(np.max(np.abs(tau_jax_Q - tau_ref_Q))),
      paper_max_abs_tau_diff_vectorised=float(np.max(np.abs(tau_jax_Q - tau_vec_Q))),
      alpha0_exact=float(res[1]), width_exact=float(res[2]),
      alpha0_forward_diff=float(res[3]), width_forward_diff=float(res[4]))


def path_section(kernels: list[np.ndarray], config) -> dict:
  """2. Multi-hop shortest-path throughput, executed and useful, against the matmul rate."""
  lengths_LNN, mask_MN = graph.layered_from_kernels(kernels, p=-1.0)
  L, n, _ = lengths_LNN.shape
  real = np.nonzero(np.asarray(mask_MN).ravel())[0]
  rng = np.random.default_rng(config.seed)
  src = np.sort(rng.choice(real, min(config.path_sources, len(real)), replace=False))
  chunk = int(config.path_chunk) or None
  blocks = [jnp.asarray(b) for b in np.array_split(src, max(1, len(src) // config.path_block))]

  def all_blocks():
    return [graph.layered_distances(lengths_LNN, b, True, chunk) for b in blocks]

  dist = common.block(all_blocks())
  t_path = common.time_fn(all_blocks, repeats=config.repeats)
  finite = np.isfinite(np.asarray(lengths_LNN))
  downstream = np.concatenate([[finite[l:].sum() for l in range(L)], [0]])
  useful = int(downstream[src // n].sum())
  executed = sum(len(b) * (L - int(b.min()) // n) * n * n for b in blocks)
  rate = executed / t_path
  flops = common.matmul_flops_per_s(1024)
  return dict(
      path_sources=len(src), path_block=config.path_block, path_padded_width=n,
      path_layers=L, path_s=t_path,
      path_relaxations_per_s_executed=rate, path_relaxations_per_s_useful=useful / t_path,
      matmul_flops_per_s=flops, path_fraction_of_matmul_rate=2.0 * rate / flops,
      path_reached_fraction=float(np.mean([np.isfinite(np.asarray(d)).mean() for d in dist])))


def run(config) -> dict:
  """Both measurements on one sampled network (configs/bench/neuromfa.py)."""
  kernels = sampled_network(config.S, config.blocks, config.width, config.sigma, config.seed)
  out = {"device": common.device_summary(), "S": config.S, "blocks": config.blocks,
         "nodes": int(sum(k.shape[0] for k in kernels) + kernels[-1].shape[1]),
         "edges": int(sum(np.count_nonzero(k) for k in kernels))}
  out.update(paper_section(kernels, int(config.T), config.repeats, config.reference_repeats))
  out.update(path_section(kernels, config))
  return out
