"""Tests of jaxcode.analysis.neuromfa: networks from params, sampling, nulls, emergence.

References we did not write: NumPy indexing/std (sampling, null scale), scipy's Dijkstra
(multi-hop counts with and without skip edges), the algebraic identity
tau_NeuroMFA(q) = tau_sandbox(q+1) under global normalisation, the closed-form E(t), and
the distributional fact that an i.i.d. Gaussian network and its matched null agree.
"""

import numpy as np
import pytest
import jax
from scipy.sparse import csgraph

from jaxcode.analysis import neuromfa as nm
from jaxcode.estimators import graph, multifractal as mf
from jaxcode.errors import ConfigError


def _mlp(widths, scales, seed):
  rng = np.random.default_rng(seed)
  return {"params": {f"Dense_{i}": {"kernel": rng.normal(0, s, (a, b)), "bias": np.zeros(b)}
                     for i, (a, b, s) in enumerate(zip(widths[:-1], widths[1:], scales))}}


def test_kernels_in_natural_order_and_sampling_reused():
  widths = [5] + [6] * 11 + [4]
  p = _mlp(widths, [1.0] * 12, 0)
  ks = nm.kernels_from_params(p)
  assert [k.shape for k in ks] == [(a, b) for a, b in zip(widths[:-1], widths[1:])]
  np.testing.assert_array_equal(ks[10], p["params"]["Dense_10"]["kernel"])
  idx = nm.sample_indices(nm.layer_widths(ks), 4, seed=3)
  again = nm.sample_indices(nm.layer_widths(ks), 4, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(idx, again))
  assert all(len(np.unique(i)) == 4 and i.max() < w for i, w in zip(idx, nm.layer_widths(ks)))
  sub = nm.sampled_kernels(ks, idx)
  np.testing.assert_array_equal(sub[2], ks[2][idx[2]][:, idx[3]])
  # a readout named before the hidden kernels (the wide models' layout) is chained last
  wide = {"a": np.ones((6, 1)), "w1": np.ones((3, 6)), "w2": 2 * np.ones((6, 6)),
          "w3": 3 * np.ones((6, 6))}
  ks = nm.kernels_from_params(wide)
  assert [k.shape for k in ks] == [(3, 6), (6, 6), (6, 6), (6, 1)] and ks[1][0, 0] == 2.0


def test_null_matches_layer_scale_and_iid_network_matches_its_null():
  """An i.i.d. Gaussian network and its matched null are the same in distribution."""
  widths, scales = [128] * 6, [0.02, 0.03, 0.015, 0.025, 0.02]
  p = _mlp(widths, scales, 1)
  ks = nm.kernels_from_params(p)
  idx = nm.sample_indices(nm.layer_widths(ks), 64, 0)
  null = nm.gaussian_null(ks, idx, 5)
  for k, z in zip(ks, null):
    assert z.shape == (64, 64) and abs(z.std() / k.std() - 1) < 0.05
  out = nm.analyse_series([p], S=64)
  r = out["checkpoints"][0]
  assert abs(r["alpha0"] / r["null_alpha0"] - 1) < 0.05, r
  assert abs(r["width"] / r["null_width"] - 1) < 0.25, r


def test_emergence_from_scale_alone_is_matched_by_null():
  """Scaling the same i.i.d. net changes alpha0 (notes §1.6); the null tracks it."""
  base = _mlp([96] * 5, [0.02] * 4, 2)
  series = [jax.tree.map(lambda x, c=c: x * c, base) for c in (1.0, 1.5, 2.5)]
  out = nm.analyse_series(series, S=48)
  cps = out["checkpoints"]
  a0 = [c["alpha0"] for c in cps]
  assert a0[0] > a0[1] > a0[2]                              # larger weights, smaller alpha0
  e = np.array([c["emergence"] for c in cps])
  e_null = np.array([c["null_emergence"] for c in cps])
  assert e[0] == 0.0 and e[2] != 0.0
  ln_a = np.log(a0[0] / np.array(a0))
  ln_null = np.log(cps[0]["null_alpha0"] / np.array([c["null_alpha0"] for c in cps]))
  np.testing.assert_allclose(ln_a, ln_null, atol=0.1 * abs(ln_a).max())
  np.testing.assert_allclose(e, e_null, atol=0.25 * abs(e).max())
  # closed form
  w = np.array([c["width"] for c in cps])
  np.testing.assert_allclose(e, w / w[0] * np.log(a0[0] / np.array(a0)), rtol=1e-12)


def test_series_means_over_samples_and_filters():
  """alpha0/width are means over index samples (NumPy mean of single-sample runs)."""
  p = _mlp([96] * 5, [0.03] * 4, 6)      # shapes of the emergence test: one compilation
  both = nm.analyse_series([p], S=48, seeds=(0, 1))["checkpoints"][0]
  one = [nm.analyse_series([p], S=48, seeds=(s,))["checkpoints"][0] for s in (0, 1)]
  assert both["kept_samples"] == 2
  np.testing.assert_allclose(both["alpha0"], np.mean([o["alpha0"] for o in one]), rtol=1e-6)
  np.testing.assert_allclose(both["width_fd"], np.mean([o["width_fd"] for o in one]), rtol=1e-6)
  ks = nm.sampled_kernels(nm.kernels_from_params(p), nm.sample_indices([96] * 5, 48, 0))
  spec = nm.spectrum(ks)
  f_pos = bool(np.any(np.asarray(spec.f_fd) > 0))
  assert nm.passes_filter(spec, 1) == (not f_pos) and nm.passes_filter(spec, 0)


def test_multihop_global_equals_sandbox_on_scipy_counts():
  """Multi-hop directed NIN: tau_NeuroMFA(q) = tau_SB(q+1) with global normalisation, the
  sandbox side from scipy Dijkstra counts (the undirected path is checked in graph_test)."""
  ks = nm.kernels_from_params(_mlp([6, 8, 7, 8, 5], [1.0] * 4, 3))
  radii = np.geomspace(0.5, 40.0, 12)
  qs = np.linspace(-2, 2, 9)
  with jax.enable_x64(True):
    spec = nm.spectrum(ks, "multihop", qs, radii=radii, normaliser="global", directed=True)
    lengths, mask = graph.layered_from_kernels(ks, dtype=np.float64)
    m = np.asarray(mask).ravel()
    d = csgraph.dijkstra(graph.layered_to_sparse(lengths, mask), directed=True)[m][:, m]
    counts = (d[:, :, None] <= radii).sum(1)
    sb = mf.sandbox_from_counts(counts, radii, int(m.sum()), qs + 1)
    np.testing.assert_allclose(np.asarray(spec.tau), np.asarray(sb.tau), atol=1e-10)


def test_skip_edges_counts_match_scipy():
  ks = nm.kernels_from_params(_mlp([6, 6, 6, 6], [1.0] * 3, 4))
  idx = [np.arange(6)] * 4
  radii = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
  with jax.enable_x64(True):
    s_skip = nm.spectrum(ks, "multihop", [0.0, 1.0], radii=radii, normaliser="global",
                         skip_indices=idx, skip_length=0.7)
  # independent graph: layered edges 1/|w| plus identity l -> l+2 of length 0.7
  n = 6
  a = np.full((24, 24), 0.0)
  for l, k in enumerate(ks):
    a[l * n:(l + 1) * n, (l + 1) * n:(l + 2) * n] = 1.0 / np.abs(k)
  for l in range(2):
    a[l * n + np.arange(n), (l + 2) * n + np.arange(n)] = 0.7
  d = csgraph.dijkstra(a, directed=False)
  counts = (d[:, :, None] <= radii).sum(1)
  with jax.enable_x64(True):
    ref = mf.neuromfa_from_counts(counts, radii, [0.0, 1.0], "global", n_nodes=24)
    np.testing.assert_allclose(np.asarray(s_skip.tau), np.asarray(ref.tau), atol=1e-10)


def test_bad_inputs_raise_one_line():
  p = _mlp([8, 6, 4], [1.0, 1.0], 0)
  with pytest.raises(ConfigError, match="S=5"):
    nm.analyse_series([p], S=5)
  with pytest.raises(ConfigError, match="checkpoint 1"):
    nm.analyse_series([p, _mlp([8, 6, 5], [1.0, 1.0], 0)], S=3)
  with pytest.raises(ConfigError, match="architecture not known"):
    nm.kernels_from_params({"a": np.ones(3)})
  with pytest.raises(ConfigError, match="architecture not known"):
    nm.kernels_from_params({"a": np.ones((3, 4)), "b": np.ones((5, 2))})
  with pytest.raises(ConfigError, match="radii"):
    nm.spectrum(nm.kernels_from_params(p), "multihop")
  with pytest.raises(ConfigError, match="mode"):
    nm.analyse_series([p], S=3, mode="boxes")
  with pytest.raises(ConfigError, match="filter_mode"):
    nm.analyse_series([p], S=3, filter_mode=7)


def test_decoder_network_reads_the_checkpoint_kernels():
  """Gemma 3 (1 KV head of 8 dims, d 32, gated MLP) through the generalised LM layout: each
  sampled kernel equals the slice of the HF weights (read straight from model.safetensors,
  transposed from nn.Linear [out, in]) at the sampled indices; the k and v outputs are drawn
  from the 8-wide KV width and link to every head node."""
  import os
  from safetensors.numpy import load_file
  from jaxcode.models.lm import load_pretrained
  fix = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "gemma3_text")
  params = load_pretrained(fix, tokenizer=False).params
  hf = load_file(os.path.join(fix, "model.safetensors"))
  assert nm.lm_model_type(params) == "decoder"
  blocks = nm.lm_blocks(params)
  assert nm.lm_dims(blocks) == (32, 48, 3) and nm.lm_attn_dims(blocks) == (32, 8)
  idx = nm.lm_sample(32, 48, 3, 4, 0, 32, 8)
  net = nm.lm_network(blocks, idx)
  x, qkv, heads, ao, mlp = idx[5:10]                   # block 1
  nxt = idx[10]
  w = lambda name: hf[f"model.layers.1.{name}.weight"].T.astype(np.float64)
  full_qkv = np.concatenate([w("self_attn.q_proj"), w("self_attn.k_proj"),
                             w("self_attn.v_proj")], 1)
  assert full_qkv.shape == (32, 48)
  np.testing.assert_allclose(net.kernels[5], full_qkv[np.ix_(x, qkv)], rtol=1e-6)
  np.testing.assert_allclose(net.kernels[7], w("self_attn.o_proj")[np.ix_(heads, ao)], rtol=1e-6)
  np.testing.assert_allclose(net.kernels[8], w("mlp.gate_proj")[np.ix_(ao, mlp)], rtol=1e-6)
  np.testing.assert_allclose(net.kernels[9], w("mlp.down_proj")[np.ix_(mlp, nxt)], rtol=1e-6)
  assert (qkv[4:] >= 32).all() and (qkv[4:] < 48).all()      # k then v, inside the KV width
  assert net.kernels[6][4:].all() and net.kernels[6][:4].sum() == 4
  res = nm.analyse_lm_series([params], S=4, seeds=(0,))
  assert res["model_type"] == "decoder" and np.isfinite(res["checkpoints"][0]["alpha0"])
