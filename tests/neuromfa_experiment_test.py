"""Tests of the NeuroMFA LM network builders and the neuromfa / emergence experiments.

References we did not write: the Hugging Face safetensors of the fixture models read
directly with safetensors.numpy (edge weights, including GPT-NeoX's per-head interleaved
fused QKV rows, read by the HF layout rather than through our key maps), the node/edge
counts of the released model2network.py layout (8S per block + S nodes; 8S^2 real and
S + 2S^2 synthetic edges per block), scipy's Dijkstra (multi-hop counts with residual
edges), and the closed-form E(t).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.sparse import csgraph

from configs import emergence as em_cfg
from configs import neuromfa as nm_cfg
from jaxcode.analysis import neuromfa as nm
from jaxcode.estimators import multifractal as mf
from jaxcode.experiments import emergence, neuromfa as nmfa_exp
from jaxcode.pipeline import neuromfa as nmfa_stage
from jaxcode.models.lm import load_pretrained
from jaxcode import parallel
from jaxcode.errors import ConfigError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(arch):
  return jax.tree.map(np.asarray, load_pretrained(os.path.join(FIX, arch), tokenizer=False).params)


def _hf_block1(arch, w, idx, d=32, H=2):
  """Expected sampled kernels of block 1 straight from the HF tensors ([out, in] or Conv1D)."""
  x, qkv, heads, ao, mlp, nxt = idx[5:11]
  K = d // H
  if arch == "gpt2":        # Conv1D [in, out]; fused q|k|v columns
    p = "transformer.h.1."
    return [w[p + "attn.c_attn.weight"][np.ix_(x, qkv)], None,
            w[p + "attn.c_proj.weight"][np.ix_(heads, ao)], w[p + "mlp.c_fc.weight"][np.ix_(ao, mlp)],
            w[p + "mlp.c_proj.weight"][np.ix_(mlp, nxt)]]
  if arch == "gpt_neox":    # Linear [out, in]; fused rows interleaved per head [q_h, k_h, v_h]
    p = "gpt_neox.layers.1."
    j, n = qkv // d, qkv % d
    rows = (n // K) * 3 * K + j * K + n % K
    return [w[p + "attention.query_key_value.weight"][rows][:, x].T, None,
            w[p + "attention.dense.weight"][np.ix_(ao, heads)].T,
            w[p + "mlp.dense_h_to_4h.weight"][np.ix_(mlp, ao)].T,
            w[p + "mlp.dense_4h_to_h.weight"][np.ix_(nxt, mlp)].T]
  p = "bert.encoder.layer.1."  # Linear [out, in], separate q, k, v
  qkv_w = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
  return [qkv_w[np.ix_(qkv, x)].T, None, w[p + "attention.output.dense.weight"][np.ix_(ao, heads)].T,
          w[p + "intermediate.dense.weight"][np.ix_(mlp, ao)].T,
          w[p + "output.dense.weight"][np.ix_(nxt, mlp)].T]


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "bert"])
def test_builder_matches_hf_weights_and_released_counts(arch):
  params = _params(arch)
  assert nm.lm_model_type(params) == arch
  blocks = nm.lm_blocks(params)
  d, d_mlp, L = nm.lm_dims(blocks)
  assert (d, d_mlp, L) == (32, 64, 2)
  S = 4
  idx = nm.lm_sample(d, d_mlp, L, S, seed=3)
  net = nm.lm_network(blocks, idx)
  assert net.n_nodes == 8 * S * L + S == sum(k.shape[0] for k in net.kernels) + S
  assert net.n_edges == L * (8 * S * S + S + 2 * S * S)
  w = load_file(os.path.join(FIX, arch, "model.safetensors"))
  for got, want in zip(net.kernels[5:10], _hf_block1(arch, w, idx)):
    if want is not None:
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  qkv, heads = idx[6], idx[7]     # synthetic: q_i -> head i only, every k, v -> every head
  syn = net.kernels[6]
  assert syn.shape == (3 * S, S)
  np.testing.assert_array_equal(syn[:S], np.eye(S))
  np.testing.assert_array_equal(syn[S:], np.ones((2 * S, S)))
  np.testing.assert_array_equal(qkv[:S], heads)
  # the same sample is reused: a rescaled checkpoint gives rescaled kernels at the same indices
  net2 = nm.lm_network(nm.lm_blocks(jax.tree.map(lambda a: 2 * a, params)), idx)
  np.testing.assert_allclose(net2.kernels[0], 2 * net.kernels[0])
  null = nm.network_null(net, 0)
  assert null.kernels[1] is net.kernels[1] and null.kernels[0].shape == net.kernels[0].shape


def test_residual_edges_multihop_match_scipy():
  params = _params("gpt2")
  blocks = nm.lm_blocks(params)
  idx = nm.lm_sample(32, 64, 2, 16, seed=0)
  net = nm.lm_network(blocks, idx, residual=True)
  assert sum(len(s[2]) for s in net.skips) == sum(
      len(np.intersect1d(idx[a], idx[b])) for b0 in (0, 5) for a, b in ((b0, b0 + 3), (b0 + 3, b0 + 5)))
  assert len(net.skips[0][2]) > 0
  radii = np.geomspace(1.0, 200.0, 8)
  with jax.enable_x64(True):
    spec = nm.network_spectrum(net, "multihop", qs=[-1.0, 0.0, 1.0], radii=radii,
                               normaliser="global", skip_length=0.5)
  # independent dense graph (offsets per layer, undirected), scipy Dijkstra
  widths = [k.shape[0] for k in net.kernels] + [net.kernels[-1].shape[1]]
  off = np.concatenate([[0], np.cumsum(widths)])
  a = np.zeros((off[-1], off[-1]))
  for l, k in enumerate(net.kernels):
    blk = np.where(k != 0, 1.0 / np.where(k != 0, np.abs(k), 1.0), 0.0)
    a[off[l]:off[l + 1], off[l + 1]:off[l + 2]] = blk
  for la, lb, ia, ib in net.skips:
    a[off[la] + ia, off[lb] + ib] = 0.5
  dist = csgraph.dijkstra(a, directed=False)
  counts = (dist[:, :, None] <= radii).sum(1)
  with jax.enable_x64(True):
    ref = mf.neuromfa_from_counts(counts, radii, [-1.0, 0.0, 1.0], "global", n_nodes=off[-1])
    np.testing.assert_allclose(np.asarray(spec.tau), np.asarray(ref.tau), atol=1e-9)


def test_emergence_run_then_neuromfa_on_its_orbax_checkpoints(tmp_path):
  """Train 1 step (checkpoint 1), E(t) closed form; launch.neuromfa reads the run."""
  c = em_cfg.get_config("tiny")
  c.steps, c.checkpoint_steps, c.optim.warmup_steps = 1, (1,), 0
  c.data.max_docs_per_source = 2
  wd = str(tmp_path / "em")
  out = emergence.run(c, wd, mesh=parallel.single_device_mesh())
  rows = out["checkpoints"]
  assert [r["step"] for r in rows] == [0, 1]
  a0, w = np.array([r["alpha0"] for r in rows]), np.array([r["width"] for r in rows])
  np.testing.assert_allclose([r["emergence"] for r in rows], w / w[0] * np.log(a0[0] / a0), rtol=1e-9)
  assert all(np.isfinite(r["null_alpha0"]) and r["eval_loss"] > 0 for r in rows)
  assert rows[1]["eval_loss"] < rows[0]["eval_loss"]           # one Adam step at lr 3e-3 learns
  saved = json.load(open(os.path.join(wd, "results.json")))
  assert saved["table"][1]["step"] == 1 and os.path.exists(os.path.join(wd, "figures", "series.png"))
  m = nm_cfg.get_config("tiny")
  m.checkpoints = (f"orbax:{wd}",)
  m.S = c.neuromfa.S
  res = nmfa_exp.run(m, str(tmp_path / "mfa"))
  assert [r["step"] for r in res["checkpoints"]] == [1]
  for r, ref in zip(res["checkpoints"], rows[1:]):
    assert r["alpha0"] == pytest.approx(ref["alpha0"], rel=1e-6)
  assert res["fit_window"]["T"] == 150 and len(res["checkpoints"][0]["f"]) == 61


def test_bad_inputs_one_line(tmp_path):
  gpt2, bert = _params("gpt2"), _params("bert")
  with pytest.raises(ConfigError, match="checkpoint 1 is bert"):
    nm.analyse_lm_series([gpt2, bert], S=4)
  with pytest.raises(ConfigError, match="S=33"):
    nm.analyse_lm_series([gpt2], S=33)
  with pytest.raises(ConfigError, match="architecture not known"):
    nm.lm_blocks({"encoder": {"kernel": np.ones((3, 3))}})
  with pytest.raises(ConfigError, match="architecture not known"):
    nm.lm_blocks(gpt2, model_type="llama")
  c = nm_cfg.get_config("tiny")
  c.q_min, c.q_max = 1.0, -1.0
  with pytest.raises(ConfigError, match="q range"):
    nmfa_exp.validate(c, str(tmp_path))
  c = nm_cfg.get_config("tiny")
  c.mode, c.multihop.window = "multihop", (1e5, 1e6)
  with pytest.raises(ConfigError, match="radius window"):
    nmfa_exp.validate(c, str(tmp_path))
  with pytest.raises(ConfigError, match="orbax"):
    nmfa_stage.parse_spec(f"orbax:{tmp_path}")
  # the launch path: one line, exit 2, before any compute
  r = subprocess.run([sys.executable, "-m", "launch.neuromfa", "--config=configs/neuromfa.py:tiny",
                      f"--workdir={tmp_path / 'w'}", "--config.checkpoints=('tests/fixtures/lm/gpt2',"
                      "'tests/fixtures/lm/bert')"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2, r.stderr[-500:]
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "checkpoint 1 is bert" in err[0], r.stderr[-500:]


def test_stage_on_labelled_params_is_the_experiment_and_is_reused(tmp_path):
  """The stage on a labelled params list (configs/neuromfa.py:stage_block as its block) gives
  the experiment's numbers; once complete it is reused without computing."""
  c = nm_cfg.get_config("tiny")
  path = os.path.join(FIX, "gpt2")
  c.checkpoints = (path,)
  labelled = nmfa_stage.load_checkpoints(c.checkpoints)
  assert [l for l, _ in labelled] == [path]
  block = nm_cfg.stage_block()
  block.S = c.S
  folder = str(tmp_path / "stage")
  res = nmfa_stage.run(labelled, block, folder, header={"variant": "x"}, log=False)
  want = nmfa_exp.run(c, str(tmp_path / "exp"))
  assert res["variant"] == "x" and want["variant"] == "tiny"
  for key in ("alpha0", "width", "null_alpha0", "null_width", "tau"):
    assert res["checkpoints"][0][key] == want["checkpoints"][0][key]
  assert nmfa_stage.run([], block, folder, log=False) == res


def test_emergence_imports_no_experiment():
  import ast
  import inspect
  tree = ast.parse(inspect.getsource(emergence))
  mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not any(m and m.startswith("jaxcode.experiments") for m in mods), mods
