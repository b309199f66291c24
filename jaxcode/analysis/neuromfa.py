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

Transformer LMs (GPT-2, GPT-NeoX, BERT trees of jaxcode.models.lm): lm_blocks, lm_sample,
lm_network (the released model2network.py block layout, optional residual edges),
network_null, network_spectrum, analyse_lm_series; see the section below.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxcode import parallel
from jaxcode.estimators import graph, multifractal as mf
from jaxcode.errors import ConfigError, positive_int

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
  positive_int("S", S)
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


def identity_skips(indices) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
  """Skip edges l -> l+2 joining the neurons sampled in both layers (local positions)."""
  out = []
  for l in range(len(indices) - 2):
    _, ia, ib = np.intersect1d(indices[l], indices[l + 2], return_indices=True)
    out.append((l, l + 2, ia, ib))
  return out


def _skip_graph(kernels, skips, p, lam, gamma, skip_length) -> sp.csr_matrix:
  """Layered graph (undirected use) plus skip edges (layer a, layer b, local i, local j)."""
  lengths, mask = graph.layered_from_kernels(kernels, p, lam, gamma, dtype=jnp.float64)
  a = graph.layered_to_sparse(lengths, mask).tolil()
  n = lengths.shape[1]
  for la, lb, ia, ib in skips:
    for i, j in zip(ia, ib):
      a[la * n + i, lb * n + j] = skip_length
  return a.tocsr()


def spectrum(kernels: Sequence[np.ndarray], mode: str = "paper", qs=mf.PAPER_QS,
             T: int = 150, p: float = -1.0, lam: float = 1.0, gamma: float = 0.0,
             radii=None, window=None, directed: bool = False, normaliser: str = "node",
             skip_indices=None, skip_length: float = 1.0, block: int = 64,
             mesh=None, skip_edges=None) -> mf.Spectrum:
  """Spectrum of one (sampled) chain of kernels; see the module docstring for modes.

  Skip edges (multihop only; paper mode is one-hop along the chain): `skip_indices`
  (per-layer neuron indices: identity edges l -> l+2) or `skip_edges` (a list of
  (layer a, layer b, local i, local j), e.g. Network.skips), each of length skip_length.
  """
  if mode == "paper":
    return mf.paper_spectrum(graph.one_hop_layered_histograms(kernels, T, p), qs,
                             max_count=max(k.shape[1] for k in kernels))
  if mode != "multihop":
    raise ConfigError(f"mode={mode!r}: expected one of {MODES}")
  if radii is None:
    raise ConfigError("radii=None: mode 'multihop' needs a declared radius grid")
  radii, _ = mf.check_window(radii, window)
  if skip_indices is not None:
    skip_edges = identity_skips(skip_indices)
  if skip_edges is not None:
    a = _skip_graph(kernels, skip_edges, p, lam, gamma, skip_length)
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


def _check_series_args(params_series, mode, filter_mode, seeds) -> None:
  """The argument checks every series analysis makes before any compute."""
  if len(params_series) == 0:
    raise ConfigError("params_series=[]: expected at least one checkpoint")
  if mode not in MODES:
    raise ConfigError(f"mode={mode!r}: expected one of {MODES}")
  if filter_mode not in FILTER_MODES:
    raise ConfigError(f"filter_mode={filter_mode}: expected one of {FILTER_MODES}")
  if len(seeds) == 0:
    raise ConfigError("seeds=(): expected at least one sampling seed")


def analyse_series(params_series: Sequence[Any], S: int | None = 64, seeds: Sequence[int] = (0,),
                   null_seed: int = 1, mode: str = "paper", filter_mode: int = 0,
                   **spectrum_kw) -> dict:
  """alpha0, width, E(t) per checkpoint, each with the matched Gaussian null beside it.

  One index sample per seed, reused for the whole series (the released code uses 10);
  alpha0 and width are means over the samples that pass `filter_mode`, and E(t) is formed
  from those means. The null redraws per checkpoint and sample with the checkpoint's
  per-layer std. Spectrum arrays are those of the first sample. JSON-ready output.
  """
  _check_series_args(params_series, mode, filter_mode, seeds)
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
    records.append(_record(specs, nulls, filter_mode, [float(k.std()) for k in ks]))
  _add_emergence(records)
  return {"S": S, "seeds": list(seeds), "mode": mode, "filter_mode": filter_mode,
          "indices": [[i.tolist() for i in idx] for idx in samples], "checkpoints": records}


def _record(specs, nulls, filter_mode: int, layer_std) -> dict:
  """One checkpoint: sample means (and the null's), first sample's spectrum arrays."""
  rec = _summary(specs, filter_mode)
  rec.update({f"null_{k}": v for k, v in _summary(nulls, filter_mode).items()})
  spec, null = specs[0], nulls[0]
  rec.update(qs=np.asarray(spec.qs).tolist(), tau=np.asarray(spec.tau).tolist(),
             alpha=np.asarray(spec.alpha).tolist(), f=np.asarray(spec.f).tolist(),
             r2=np.asarray(spec.r2).tolist(), alpha_fd=np.asarray(spec.alpha_fd).tolist(),
             f_fd=np.asarray(spec.f_fd).tolist(), null_tau=np.asarray(null.tau).tolist(),
             null_alpha=np.asarray(null.alpha).tolist(), null_f=np.asarray(null.f).tolist(),
             null_r2=np.asarray(null.r2).tolist(), layer_std=list(layer_std))
  return rec


def _add_emergence(records: list[dict]) -> None:
  for prefix in ("", "null_"):
    for suffix in ("", "_fd"):
      e = emergence([r[f"{prefix}alpha0{suffix}"] for r in records],
                    [r[f"{prefix}width{suffix}"] for r in records])
      for r, v in zip(records, e):
        r[f"{prefix}emergence{suffix}"] = float(v)


# ------------------------------------------------------------------ transformer LMs
#
# The released model2network.py layout per block, on the params pytrees of
# jaxcode.models.lm (kernels are [in, out]; q, k, v are separate, so the interleaved
# per-head rows of GPT-NeoX's fused QKV are already untangled):
#   x (S of d) -> qkv (3S: q, k, v outputs at the head indices) -> heads (S of d, a
#   synthetic 0/1 matrix: q_i -> head i, every k, v -> every head; weight 1, distance 1)
#   -> attn_out (S of d, the attention output projection) -> mlp (2S of d_mlp, the MLP
#   input projection) -> next block's x (S of d, the MLP output projection).
# Biases, LayerNorms, embeddings and the head are not part of the network.
# Residual (skip) edges, optional: x_b(i) -> attn_out_b(i) and attn_out_b(i) -> x_{b+1}(i)
# for every d_model index i sampled in both (the residual stream around attention and MLP).

# Decoder families (Llama, Qwen, Gemma: jaxcode.models.lm.llama / gemma) differ in two ways,
# both handled without changing the classic layout's sampling: grouped-query attention, where
# q is [d, H*hd] and k, v are [d, N*hd] (the qkv node layer stacks [q | k | v], the heads
# layer has H*hd nodes, and S k- and v-outputs are drawn from the N*hd of each; as in the
# released layout every sampled k, v output links to every head node), and the gated MLP
# down(act(gate(x)) * up(x)), whose MLP-input kernel is taken to be the gate projection (the
# one the nonlinearity acts on, the role c_fc plays in GPT-2).
LM_LAYOUTS = {   # model_type: (block prefix, (q, k, v), attention out, MLP in, MLP out)
    "gpt2": ("h_", ("q", "k", "v"), "c_proj_attn", "c_fc", "c_proj_mlp"),
    "gpt_neox": ("layers_", ("q", "k", "v"), "attn_dense", "dense_h_to_4h", "dense_4h_to_h"),
    "bert": ("layer_", ("query", "key", "value"), "attn_dense", "intermediate", "output"),
    "decoder": ("layers_", ("q", "k", "v"), "o", "gate", "down"),
}
LM_LAYERS = ("x", "qkv", "heads", "attn_out", "mlp")   # node layers per block (then final x)


@dataclasses.dataclass
class Network:
  """A sampled neuron-interaction network: a chain of kernels plus optional skip edges."""
  kernels: list            # sampled kernels (n_l, n_{l+1}), float64
  layer_std: list          # std of each kernel's full weight matrix; None: synthetic 0/1 edges
  names: list              # node-layer names, len(kernels) + 1
  indices: list            # neuron indices of each node layer in its full layer
  skips: list              # (layer a, layer b, local i, local j) skip edges

  @property
  def n_nodes(self) -> int:
    return int(sum(len(i) for i in self.indices))

  @property
  def n_edges(self) -> int:
    return int(sum(np.count_nonzero(k) for k in self.kernels) + sum(len(s[2]) for s in self.skips))


def _unwrap(params):
  return params["params"] if isinstance(params, dict) and set(params) == {"params"} else params


def lm_model_type(params) -> str:
  """'gpt2', 'gpt_neox' or 'bert' from the block names of a jaxcode.models.lm params tree."""
  params = _unwrap(params)
  keys = list(params) if isinstance(params, dict) else []
  for name, (prefix, qkv, ao, mi, mo) in LM_LAYOUTS.items():
    block = params.get(f"{prefix}0") if keys else None
    if isinstance(block, dict) and all(n in block for n in (*qkv, ao, mi, mo)):
      return name
  raise ConfigError(f"params with top-level keys {sorted(map(str, keys))[:6]}: architecture not "
                    f"known, expected a GPT-2, GPT-NeoX, BERT, Llama, Qwen or Gemma tree of "
                    f"jaxcode.models.lm")


def lm_blocks(params, model_type: str | None = None) -> list[dict]:
  """Per block the full kernels {q, k, v, attn_out, mlp_in, mlp_out} as float64 NumPy."""
  if model_type is not None and model_type not in LM_LAYOUTS:
    raise ConfigError(f"model_type={model_type!r}: architecture not known, expected one of "
                      f"{sorted(LM_LAYOUTS)}")
  found = lm_model_type(params)
  if model_type is not None and found != model_type:
    raise ConfigError(f"model_type={model_type!r}: the params are a {found!r} tree")
  params = _unwrap(params)
  prefix, qkv, ao, mi, mo = LM_LAYOUTS[found]
  n = 0
  while f"{prefix}{n}" in params:
    n += 1
  k = lambda b, name: np.asarray(params[f"{prefix}{b}"][name]["kernel"], np.float64)
  return [{"q": k(b, qkv[0]), "k": k(b, qkv[1]), "v": k(b, qkv[2]), "attn_out": k(b, ao),
           "mlp_in": k(b, mi), "mlp_out": k(b, mo)} for b in range(n)]


def lm_dims(blocks) -> tuple[int, int, int]:
  """(d_model, d_mlp, n_blocks)."""
  return blocks[0]["q"].shape[0], blocks[0]["mlp_in"].shape[1], len(blocks)


def lm_attn_dims(blocks) -> tuple[int, int]:
  """(d_attn, d_kv): the widths of the q and of the k (= v) outputs (both d_model unless
  the heads are narrower, wider or grouped)."""
  return blocks[0]["q"].shape[1], blocks[0]["k"].shape[1]


def _check_S(S: int, widths: dict) -> None:
  positive_int("S", S)
  for name, (need, width) in widths.items():
    if need > width:
      raise ConfigError(f"S={S}: {need} sampled neurons exceed the {name} layer's width "
                        f"{width}, expected S <= {width * S // need}")


def lm_sample(d_model: int, d_mlp: int, n_blocks: int, S: int, seed: int,
              d_attn: int | None = None, d_kv: int | None = None) -> list[np.ndarray]:
  """Sorted neuron indices of every node layer (LM_LAYERS per block, then the final x).

  qkv indices are global rows of the stacked [q | k | v] outputs: h, h + d, h + 2d for
  the head indices h (the released code's nums2 from nums3); S of d_model for x, heads
  and attn_out, 2S of d_mlp for the MLP hidden layer, all seeded. With d_attn / d_kv (the
  q and k widths, when they differ from d_model) the heads are S of d_attn and the k and v
  outputs S of d_kv each, drawn after the block's other layers.
  """
  d_attn, d_kv = d_attn or d_model, d_kv or d_model
  classic = d_attn == d_kv == d_model
  _check_S(S, {"d_model": (S, d_model), "MLP hidden": (2 * S, d_mlp),
               "attention": (S, min(d_attn, d_kv))})
  rng = np.random.default_rng(seed)
  pick = lambda w, n: np.sort(rng.choice(w, n, replace=False))
  out = []
  for _ in range(n_blocks):
    x, heads, ao, mlp = pick(d_model, S), pick(d_attn, S), pick(d_model, S), pick(d_mlp, 2 * S)
    k, v = (heads, heads) if classic else (pick(d_kv, S), pick(d_kv, S))
    qkv = np.concatenate([heads, k + d_attn, v + d_attn + d_kv])
    out += [x, qkv, heads, ao, mlp]
  return out + [pick(d_model, S)]


def lm_network(blocks, indices, residual: bool = False) -> Network:
  """The sampled network of a list of lm_blocks under lm_sample indices."""
  d, d_mlp, n_blocks = lm_dims(blocks)
  d_attn = lm_attn_dims(blocks)[0]
  if len(indices) != 5 * n_blocks + 1:
    raise ConfigError(f"indices for {(len(indices) - 1) / 5:g} blocks: the params have {n_blocks}")
  kernels, stds, names, skips = [], [], [], []
  for b, w in enumerate(blocks):
    x, qkv, heads, ao, mlp = indices[5 * b:5 * b + 5]
    nxt = indices[5 * b + 5]
    full_qkv = np.concatenate([w["q"], w["k"], w["v"]], axis=1)          # [d, 3d]
    syn = np.where(qkv[:, None] < d_attn, qkv[:, None] == heads[None], True).astype(np.float64)
    kernels += [full_qkv[np.ix_(x, qkv)], syn, w["attn_out"][np.ix_(heads, ao)],
                w["mlp_in"][np.ix_(ao, mlp)], w["mlp_out"][np.ix_(mlp, nxt)]]
    stds += [float(full_qkv.std()), None, float(w["attn_out"].std()), float(w["mlp_in"].std()),
             float(w["mlp_out"].std())]
    names += [f"blocks.{b}.{n}" for n in LM_LAYERS]
    if residual:
      for la, lb, ia, ib in ((5 * b, 5 * b + 3, x, ao), (5 * b + 3, 5 * b + 5, ao, nxt)):
        _, pa, pb = np.intersect1d(ia, ib, return_indices=True)
        skips.append((la, lb, pa, pb))
  names.append(f"blocks.{n_blocks}.x")
  return Network(kernels, stds, names, list(indices), skips)


def network_null(net: Network, seed: int) -> Network:
  """Every real-weight kernel redrawn i.i.d. N(0, std^2) of its full layer; synthetic kept."""
  rng = np.random.default_rng(seed)
  ks = [k if s is None else rng.normal(0.0, s, k.shape) for k, s in zip(net.kernels, net.layer_std)]
  return dataclasses.replace(net, kernels=ks)


def network_spectrum(net: Network, mode: str = "paper", **spectrum_kw) -> mf.Spectrum:
  """spectrum() of a Network; its skip edges are used in multihop mode."""
  skips = net.skips if (net.skips and mode == "multihop") else None
  return spectrum(net.kernels, mode=mode, skip_edges=skips, **spectrum_kw)


def analyse_lm_series(params_series: Sequence[Any], model_type: str | None = None,
                      S: int = 64, seeds: Sequence[int] = (0,), null_seed: int = 1,
                      mode: str = "paper", filter_mode: int = 0, residual: bool = False,
                      **spectrum_kw) -> dict:
  """analyse_series for jaxcode.models.lm params trees (the released block layout; GPT-2,
  GPT-NeoX, BERT, and Llama / Qwen / Gemma as LM_LAYOUTS describes).

  One lm_sample per seed, reused across the series; the null redraws each real-weight
  kernel per checkpoint and sample at its checkpoint's full-layer std.
  """
  _check_series_args(params_series, mode, filter_mode, seeds)
  types = [lm_model_type(p) for p in params_series]
  model_type = model_type or types[0]
  series = [lm_blocks(p) for p in params_series]
  arch0 = (model_type, lm_dims(series[0]))
  for t, blocks in enumerate(series):
    if (types[t], lm_dims(blocks)) != arch0:
      raise ConfigError(f"checkpoint {t} is {types[t]} (d_model, d_mlp, blocks)="
                        f"{lm_dims(blocks)}: expected {arch0[0]} {arch0[1]} (the first "
                        f"checkpoint's or the given model_type)")
  d_attn, d_kv = lm_attn_dims(series[0])
  samples = [lm_sample(*lm_dims(series[0]), S, s, d_attn, d_kv) for s in seeds]
  records = []
  for t, blocks in enumerate(series):
    nets = [lm_network(blocks, idx, residual) for idx in samples]
    specs = [network_spectrum(n, mode, **spectrum_kw) for n in nets]
    nulls = [network_spectrum(network_null(n, null_seed + 1000 * j + t), mode, **spectrum_kw)
             for j, n in enumerate(nets)]
    records.append(_record(specs, nulls, filter_mode, nets[0].layer_std))
  _add_emergence(records)
  net = lm_network(series[0], samples[0], residual)
  return {"model_type": model_type, "S": S, "seeds": list(seeds), "mode": mode,
          "filter_mode": filter_mode, "residual": residual, "d_model": arch0[1][0],
          "d_mlp": arch0[1][1], "n_blocks": arch0[1][2], "nodes": net.n_nodes,
          "edges": net.n_edges, "layers": net.names,
          "indices": [[i.tolist() for i in idx] for idx in samples], "checkpoints": records}
