"""NeuroMFA over checkpoints: neuron-interaction networks from params and their spectra.

Network: nodes are the neurons of successive layers; layer l -> l+1 edges carry the
kernel W_l (n_l, n_{l+1}) with distance |w|^p (p = -1 default; zero weights: no edge).
The kernels of a params pytree are found by a generic rule: every 2-D leaf (a Dense
`kernel`, or any 2-D array), in natural path order ('Dense_2' before 'Dense_10') when
that chains, else in the order in which each n_out feeds the next n_in (the wide
models' {'w1', 'w2', ..., 'a'}); if no such chain uses them all, the architecture is not
known here.
A plain MLP dict {'Dense_0': {'kernel', 'bias'}, ...} (optionally under 'params') fits.

Sampling (as NeuroMFA's released code): S neurons per layer, uniformly without
replacement, from a seeded generator; the same indices are reused for every checkpoint
of a series. Optional skip edges join layer l to l+2 through the identity on neurons
sampled in both (residual-style, distance `skip_length`); they need the sparse route.

Spectra: mode 'paper' (one-hop distances in (1, T], per-node normalisation; the released
algorithm) or 'multihop' (shortest paths lam*sum|w|^p + gamma*hops, ball counts on a
declared radius grid, the NeuroMFA node-centred estimator over a declared window).
Emergence E(t) = w(t)/w(0) * ln(alpha0(0)/alpha0(t)) with a matched null: every sampled
kernel replaced by i.i.d. Gaussian weights with the std of its full layer, same sampling.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxcode import parallel
from jaxcode.estimators import graph, multifractal as mf
from jaxcode.parallel import ConfigError

MODES = ("paper", "multihop")


# ------------------------------------------------------------------ params -> kernels


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _chain_order(shapes: list[tuple[int, int]], budget: int = 100_000) -> list[int] | None:
  """An order of all kernels in which each n_out feeds the next n_in, or None.

  Depth-first, trying kernels in natural path order (so that natural order wins whenever
  it chains, and equal shapes keep their path order); starts preferably at kernels whose
  input width no other kernel produces.
  """
  n = len(shapes)
  steps = [0]

  def extend(order, used):
    if len(order) == n:
      return order
    steps[0] += 1
    if steps[0] > budget:
      return None
    out = shapes[order[-1]][1]
    for j in range(n):
      if not used[j] and shapes[j][0] == out:
        used[j] = True
        found = extend(order + [j], used)
        used[j] = False
        if found:
          return found
    return None

  produced = {s[1] for s in shapes}
  starts = sorted(range(n), key=lambda i: shapes[i][0] in produced)
  for i in starts:
    used = [False] * n
    used[i] = True
    found = extend([i], used)
    if found:
      return found
  return None


def kernels_from_params(params: Any) -> list[np.ndarray]:
  """Successive 2-D kernels of a params pytree, as float64 NumPy.

  Natural path order ('Dense_2' before 'Dense_10') when it chains; otherwise the order in
  which every kernel's n_out feeds the next one's n_in (e.g. {'a': readout, 'w1', 'w2'}).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  found = [(parallel.path_str(p), np.asarray(x, np.float64)) for p, x in leaves
           if np.ndim(x) == 2]
  if not found:
    raise ConfigError("params: architecture not known, expected successive 2-D kernels "
                      "(found no 2-D leaf)")
  found.sort(key=lambda t: _natural_key(t[0]))
  order = _chain_order([k.shape for _, k in found])
  if order is None:
    desc = ", ".join(f"{name} {k.shape}" for name, k in found[:8])
    raise ConfigError(f"params: architecture not known, 2-D leaves {desc} do not chain "
                      f"into successive layers (n_out of one = n_in of the next)")
  return [found[i][1] for i in order]


def layer_widths(kernels: Sequence[np.ndarray]) -> list[int]:
  return [kernels[0].shape[0]] + [k.shape[1] for k in kernels]


def sample_indices(widths: Sequence[int], S: int | None, seed: int) -> list[np.ndarray]:
  """S sorted neuron indices per layer (None: every neuron), seeded."""
  if S is None:
    return [np.arange(w) for w in widths]
  for l, w in enumerate(widths):
    if S > w:
      raise ConfigError(f"S={S}: larger than layer {l} of width {w}, expected S <= {min(widths)}")
  if S < 1:
    raise ConfigError(f"S={S}: expected a positive sample size")
  rng = np.random.default_rng(seed)
  return [np.sort(rng.choice(w, S, replace=False)) for w in widths]


def sampled_kernels(kernels, indices) -> list[np.ndarray]:
  return [k[np.ix_(indices[l], indices[l + 1])] for l, k in enumerate(kernels)]


def gaussian_null(kernels, indices, seed: int) -> list[np.ndarray]:
  """I.i.d. N(0, std(W_l)^2) at the sampled size, std from each full layer."""
  rng = np.random.default_rng(seed)
  return [rng.normal(0.0, k.std(), (len(indices[l]), len(indices[l + 1])))
          for l, k in enumerate(kernels)]


# ------------------------------------------------------------------ spectra


def _skip_graph(kernels, indices, p, lam, gamma, skip_length) -> sp.csr_matrix:
  """Layered graph (undirected use) plus identity skip edges l -> l+2 on shared neurons."""
  lengths, mask = graph.layered_from_kernels(kernels, p, lam, gamma, dtype=jnp.float64)
  a = graph.layered_to_sparse(lengths, mask).tolil()
  n = lengths.shape[1]
  for l in range(len(indices) - 2):
    _, ia, ib = np.intersect1d(indices[l], indices[l + 2], return_indices=True)
    for i, j in zip(ia, ib):
      a[l * n + i, (l + 2) * n + j] = skip_length
  return a.tocsr()


def spectrum(kernels: Sequence[np.ndarray], mode: str = "paper", qs=mf.PAPER_QS,
             T: int = 150, p: float = -1.0, lam: float = 1.0, gamma: float = 0.0,
             radii=None, window=None, directed: bool = False, normaliser: str = "node",
             skip_indices=None, skip_length: float = 1.0, block: int = 64,
             mesh=None) -> mf.Spectrum:
  """Spectrum of one (sampled) chain of kernels; see the module docstring for modes."""
  if mode == "paper":
    return mf.paper_spectrum(graph.one_hop_layered_histograms(kernels, T, p), qs,
                             max_count=max(k.shape[1] for k in kernels))
  if mode != "multihop":
    raise ConfigError(f"mode={mode!r}: expected one of {MODES}")
  if radii is None:
    raise ConfigError("radii=None: mode 'multihop' needs a declared radius grid")
  radii, _ = mf.check_window(radii, window)
  if skip_indices is not None:
    a = _skip_graph(kernels, skip_indices, p, lam, gamma, skip_length)
    real = np.nonzero(np.diff(a.indptr) + np.diff(a.tocsc().indptr))[0]
    sub = a[real][:, real]
    counts = graph.sparse_ball_counts(sub, radii, np.arange(sub.shape[0]), directed=directed)
    n_nodes = sub.shape[0]
  else:
    lengths, mask = graph.layered_from_kernels(kernels, p, lam, gamma)
    counts = graph.layered_ball_counts(lengths, mask, radii, directed=directed, block=block,
                                       mesh=mesh)
    n_nodes = int(np.asarray(mask).sum())
  return mf.neuromfa_from_counts(counts, radii, qs, normaliser, n_nodes=n_nodes, window=window)


def emergence(alpha0: np.ndarray, width: np.ndarray) -> np.ndarray:
  """E(t) = w(t)/w(0) * ln(alpha0(0)/alpha0(t)); E(0) = 0."""
  a, w = np.asarray(alpha0, np.float64), np.asarray(width, np.float64)
  return w / w[0] * np.log(a[0] / a)


FILTER_MODES = (0, 1, 2, 3)


def passes_filter(spec: mf.Spectrum, filter_mode: int) -> bool:
  """The released code's spectrum filters on forward-difference alpha, f.

  0: keep all; 1: drop if any f > 0; 2: drop if max(alpha) - alpha[0] > 0.01; 3: both.
  """
  a, f = np.asarray(spec.alpha_fd), np.asarray(spec.f_fd)
  bad_f = bool(np.any(f > 0))
  bad_a = bool(a.max() - a[0] > 0.01)
  return not ((filter_mode in (1, 3) and bad_f) or (filter_mode in (2, 3) and bad_a))


def _summary(specs: Sequence[mf.Spectrum], filter_mode: int) -> dict:
  """Means over the index samples that pass the filter (NaN when none does)."""
  kept = [s for s in specs if passes_filter(s, filter_mode)]
  mean = lambda name: float(np.mean([float(getattr(s, name)) for s in kept])) if kept else float("nan")
  return {"alpha0": mean("alpha0"), "width": mean("width"), "alpha0_fd": mean("alpha0_fd"),
          "width_fd": mean("width_fd"), "kept_samples": len(kept)}


def analyse_series(params_series: Sequence[Any], S: int | None = 64, seeds: Sequence[int] = (0,),
                   null_seed: int = 1, mode: str = "paper", filter_mode: int = 0,
                   **spectrum_kw) -> dict:
  """alpha0, width, E(t) per checkpoint, each with the matched Gaussian null beside it.

  One index sample per seed, reused for the whole series (the released code uses 10);
  alpha0 and width are means over the samples that pass `filter_mode`, and E(t) is formed
  from those means. The null redraws per checkpoint and sample with the checkpoint's
  per-layer std. Spectrum arrays are those of the first sample. JSON-ready output.
  """
  if len(params_series) == 0:
    raise ConfigError("params_series=[]: expected at least one checkpoint")
  if mode not in MODES:
    raise ConfigError(f"mode={mode!r}: expected one of {MODES}")
  if filter_mode not in FILTER_MODES:
    raise ConfigError(f"filter_mode={filter_mode}: expected one of {FILTER_MODES}")
  if len(seeds) == 0:
    raise ConfigError("seeds=(): expected at least one sampling seed")
  series = [kernels_from_params(p) for p in params_series]
  shapes0 = [k.shape for k in series[0]]
  for t, ks in enumerate(series[1:], 1):
    if [k.shape for k in ks] != shapes0:
      raise ConfigError(f"checkpoint {t} has kernels {[k.shape for k in ks]}: expected the "
                        f"architecture of checkpoint 0, {shapes0}")
  samples = [sample_indices(layer_widths(series[0]), S, s) for s in seeds]
  skip = spectrum_kw.pop("skip", False)
  records = []
  for t, ks in enumerate(series):
    specs, nulls = [], []
    for j, indices in enumerate(samples):
      kw = dict(spectrum_kw, mode=mode, skip_indices=indices if skip else None)
      specs.append(spectrum(sampled_kernels(ks, indices), **kw))
      nulls.append(spectrum(gaussian_null(ks, indices, null_seed + 1000 * j + t), **kw))
    rec = _summary(specs, filter_mode)
    rec.update({f"null_{k}": v for k, v in _summary(nulls, filter_mode).items()})
    spec = specs[0]
    rec.update(qs=np.asarray(spec.qs).tolist(), tau=np.asarray(spec.tau).tolist(),
               alpha=np.asarray(spec.alpha).tolist(), f=np.asarray(spec.f).tolist(),
               r2=np.asarray(spec.r2).tolist(),
               layer_std=[float(k.std()) for k in ks])
    records.append(rec)
  for prefix in ("", "null_"):
    for suffix in ("", "_fd"):
      e = emergence([r[f"{prefix}alpha0{suffix}"] for r in records],
                    [r[f"{prefix}width{suffix}"] for r in records])
      for r, v in zip(records, e):
        r[f"{prefix}emergence{suffix}"] = float(v)
  return {"S": S, "seeds": list(seeds), "mode": mode, "filter_mode": filter_mode,
          "indices": [[i.tolist() for i in idx] for idx in samples], "checkpoints": records}
