"""Transcoders, skip transcoders and cross-layer transcoders: planted recovery, sharding,
exact resumption, exports, the BatchTopK -> JumpReLU conversion.

References: the planted transcoder's ground truth (jaxcode.data.synthetic.PlantedTranscoder:
encoder directions, decoders, skip maps we generate, not learn); single-device training as
the reference for the sharded run (float tolerance); the uninterrupted run for the resumed
one (bitwise: the same computation); the exported files read back by the format readers
(whose layouts are tested against independent numpy readings in transcoder_io_test); the
dense TopK path for the sparse one.
"""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from configs import transcoder as tc_configs
from jaxcode import parallel
from jaxcode.analysis import transcoder_eval
from jaxcode.data.sources import PairedSource
from jaxcode.data.synthetic import PlantedTranscoder
from jaxcode.models import clt as clt_lib
from jaxcode.models import sae as sae_lib
from jaxcode.models import sae_io, transcoder_io
from jaxcode.pipeline import transcoder as tc_stage
from jaxcode.train import loop
from launch_util import set_fields


def _cfg(kind="clt", arch="topk", **over):
  c = tc_configs.get_config("tiny")
  c.unlock()
  c.kind = kind
  c.sae.architecture = arch
  c.optim.warmup_steps = 5
  set_fields(c, **over)
  c.lock()
  return c


def _source(kind, n_features=24, signed=False, seed=0):
  pl = PlantedTranscoder(n_layers=3, d_in=32, d_out=24, n_features=n_features, l0=2.0,
                         cross_layer=kind == "clt", skip=kind == "skip", offset=0.5,
                         signed=signed, seed=seed)
  return PairedSource(planted=pl)


def _mesh(data=1, model=1):
  return parallel.make_mesh(data, model, devices=jax.devices()[:data * model])


def _train(cfg_block, src, mesh, folder, steps=None, on_metrics=None):
  cfg = tc_stage.validate(cfg_block, src.n_layers, src.d_in, src.d_out,
                          mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL])
  task = tc_stage.make_task(cfg_block, src, cfg, mesh)
  return loop.train(task, cfg_block, folder, mesh=mesh, on_metrics=on_metrics)


_TRAINED: dict = {}   # (kind, arch, steps) -> (cfg, params, aux, source): trained once per file


def _trained(kind, arch, steps, tmp_path):
  """A planted run, trained once and shared by the tests of this file."""
  key = (kind, arch, steps)
  if key not in _TRAINED:
    skip = kind == "skip"
    c = _cfg(kind, arch, steps=steps, log_every=steps,
             **{"checkpoint.every": steps, "sae.d_sae": 48, "optim.lr": 3e-3})
    src = _source(kind, n_features=16 if skip else 24, signed=skip)
    res = _train(c, src, _mesh(), str(tmp_path / "_".join(map(str, key))))
    cfg = tc_stage.validate(c, 3, 32, 24)
    _TRAINED[key] = (c, cfg, *jax.device_get((res.state.params, res.state.aux)), src)
  return _TRAINED[key]


RECOVERY_STEPS = {"plt": 1000, "clt": 1600, "skip": 1200}


@pytest.mark.parametrize("kind", ["plt", "clt", "skip"])
def test_planted_transcoder_is_recovered(kind, tmp_path):
  """Each variant recovers the planted encoder directions and decoders (mean best cosine
  >= 0.9 at every layer), and the skip variant the planted skip map up to the one exact
  trade with each feature's decoder (transcoder_eval._skip_identifiable_error)."""
  c, cfg, params, aux, src = _trained(kind, "topk", RECOVERY_STEPS[kind], tmp_path)
  held = src.sample(2048, 1)
  for r in tc_stage._evaluate(c, cfg, params, aux, held, (0, 1, 2), src):
    assert r["planted_encoder_cosine"] >= 0.9, r
    assert r["planted_decoder_cosine"] >= 0.9, r
    assert r["fvu"] < 0.15 and 1.0 <= r["l0"] <= 3.0, r
    if kind == "skip":
      assert r["planted_skip_rel_error_identifiable"] <= 0.15, r
      # the raw error is far larger: the trade is real, and the test above discounts it
      assert r["planted_skip_rel_error"] > r["planted_skip_rel_error_identifiable"]


@pytest.mark.parametrize("kind,arch", [("clt", "batchtopk"), ("skip", "topk")])
def test_sharded_2x4_equals_one_device(kind, arch, tmp_path):
  """Latents over `model` (4), tokens over `data` (2): the same parameters as on one device,
  within float tolerance (different reductions); for the CLT every feature's encoder and all
  its decoders share a shard."""
  c = _cfg(kind, arch, steps=4, log_every=1, batch_size=64, **{"optim.warmup_steps": 2,
                                                              "checkpoint.every": 100,
                                                              "sae.d_sae": 32})
  src = _source(kind)
  one = _train(c, src, _mesh(), str(tmp_path / "one"))
  mesh = _mesh(2, 4)
  eight = _train(c, src, mesh, str(tmp_path / "eight"))
  if kind == "clt":
    spec = eight.state.params["W_dec_1"].sharding.spec
    assert spec[1] == parallel.MODEL and \
        eight.state.params["W_enc_LMD"].sharding.spec[2] == parallel.MODEL
  a, b = jax.device_get((one.state.params, eight.state.params))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_exact_resumption_after_sigterm(tmp_path):
  """Stopped by SIGTERM mid-run and rerun: bitwise the uninterrupted run (params, Adam,
  dead-latent counters, per-layer thresholds and scales, data position).  The per-layer
  stacks share the SAE family's loop state, resumed bitwise in sae_experiment_test."""
  kind = "clt"
  c = _cfg(kind, "batchtopk", steps=8, log_every=1, batch_size=64,
           **{"checkpoint.every": 100, "sae.d_sae": 32, "sae.dead_tokens": 128})
  src = _source(kind)
  full = _train(c, src, _mesh(), str(tmp_path / "full"))

  def kill(step, _):
    if step == 4:
      os.kill(os.getpid(), signal.SIGTERM)
  with pytest.raises(loop.Preempted):
    _train(c, src, _mesh(), str(tmp_path / "part"), on_metrics=kill)
  resumed = _train(c, src, _mesh(), str(tmp_path / "part"))
  assert resumed.resumed_from is not None and 4 <= resumed.resumed_from < 8
  for x, y in zip(jax.tree.leaves(jax.device_get(full.state)),
                  jax.tree.leaves(jax.device_get(resumed.state))):
    np.testing.assert_array_equal(x, y)


def test_sparse_clt_path_has_the_dense_gradients():
  """The CLT's sparse TopK path (gathered decoders, scattered encoder gradients) gives the
  dense path's loss and gradients, AuxK included."""
  grads = {}
  for sparse in (False, True):
    cfg = tc_stage.clt_config(_cfg("clt", **{"sae.d_sae": 40, "sae.k": 3}), 3, 32, 24)
    cfg = dataclasses.replace(cfg, sparse_decode=sparse, dead_tokens=1)
    src = _source("clt")
    b = src.batch(0, 16)
    p, a = clt_lib.make_init(cfg, src.sample(256, 0))(jax.random.key(1))
    a["tokens_since_fired"] = a["tokens_since_fired"].at[0, 1, :20].set(5)   # dead: AuxK
    (l, (m, _)), g = jax.value_and_grad(clt_lib.make_loss(cfg), has_aux=True)(p, a, b, None, 3)
    assert float(m["aux_loss"]) > 0
    grads[sparse] = (l, g)
  np.testing.assert_allclose(grads[True][0], grads[False][0], rtol=1e-6)
  for k in grads[True][1]:
    np.testing.assert_allclose(grads[True][1][k], grads[False][1][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,arch", [("clt", "topk"), ("clt", "batchtopk"),
                                       ("clt", "jumprelu_tanh"), ("skip", "topk"),
                                       ("plt", "jumprelu")])
def test_export_import_gives_the_trained_outputs(kind, arch, tmp_path):
  """What the stage writes reads back (circuit-tracer layouts, and SAELens for JumpReLU)
  with the outputs of the trained dictionary itself (normalisation folded)."""
  steps = RECOVERY_STEPS[kind] if arch == "topk" else 300 if arch == "batchtopk" else 30
  _, cfg, params, aux, src = _trained(kind, arch, steps, tmp_path)
  x = src.sample(64, 5)["x"]
  out = tc_stage.export(str(tmp_path / "export"), cfg, params, aux, (0, 1, 2),
                        {"model_name": "planted"})
  if kind == "clt":
    p, a = sae_lib.select(params, 0), sae_lib.select(aux, 0)
    want = clt_lib.decode(cfg, p, a, clt_lib.encode(cfg, p, a, x), x)
    got = transcoder_io.clt_forward(transcoder_io.load_circuit_tracer_clt(
        out["circuit_tracer"]), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return
  loaded = transcoder_io.load_circuit_tracer_plts(out["circuit_tracer"])
  for i in range(3):
    one = transcoder_eval.single(cfg, i)
    p, a = sae_lib.select(params, i), sae_lib.select(aux, i)
    want = sae_lib.decode(one, p, a, sae_lib.encode(one, p, a, x[:, i]), x_BD=x[:, i])
    np.testing.assert_allclose(sae_io.forward(loaded[i], x[:, i]), want, rtol=1e-4,
                               atol=1e-5)
    if arch == "jumprelu":
      sl = sae_io.load_saelens(out["saelens"][i])
      assert sl.kind == "transcoder" and sl.hook_in == "blocks.{layer}.mlp_in".format(layer=i)
      np.testing.assert_allclose(sae_io.forward(sl, x[:, i]), want, rtol=1e-4, atol=1e-5)


def test_batchtopk_clt_as_jumprelu_keeps_its_l0(tmp_path):
  """A BatchTopK CLT at inference is JumpReLU at per-layer thresholds: the L0-matched ones
  (jumprelu_thresholds) give k per layer on their sample exactly (ties aside), and the EMA
  thresholds of training give close to k on held-out data."""
  _, cfg, params, aux, src = _trained("clt", "batchtopk", 300, tmp_path)
  p, a = sae_lib.select(params, 0), sae_lib.select(aux, 0)
  x = src.sample(2048, 9)["x"]
  thr = clt_lib.jumprelu_thresholds(cfg, p, a, x)
  pre = np.asarray(clt_lib.pre_activations(p, x * np.asarray(a["norm_scale"])[None, :, None]))
  l0_matched = np.mean(np.sum(pre >= thr[None, :, None], axis=2), axis=0)
  np.testing.assert_allclose(l0_matched, cfg.k, atol=0.01)
  l0_ema = np.mean(np.sum(np.asarray(clt_lib.encode(cfg, p, a, x)) > 0, axis=2), axis=0)
  assert np.all(np.abs(l0_ema - cfg.k) <= 0.35 * cfg.k), (l0_ema, np.asarray(a["threshold"]))


def test_a_sweep_trains_every_value_at_every_layer_on_one_stream():
  """sweep_k over a per-layer set: one stack of layers x values (layer-major), each
  dictionary reading its own layer of the shared batch; its loss equals the dictionaries'
  losses computed one by one (the stack adds nothing between them)."""
  c = _cfg("plt", **{"sae.sweep_k": (2, 4), "sae.d_sae": 16})
  cfg = tc_stage.validate(c, 3, 32, 24)
  assert cfg.n_saes == 6 and cfg.sources == (0, 0, 1, 1, 2, 2) and cfg.ks == (2, 4) * 3
  src = _source("plt")
  p, a = sae_lib.make_init(cfg, src.sample(256, 0))(jax.random.key(0))
  b = src.batch(0, 32)
  total, (m, _) = sae_lib.make_loss(cfg)(p, a, b, None, 0)
  parts = []
  for i, layer in enumerate(cfg.sources):
    one = transcoder_eval.single(cfg, i)
    l, _ = sae_lib.make_loss(one)(jax.tree.map(lambda v: v[i:i + 1], p),
                                  jax.tree.map(lambda v: v[i:i + 1], a),
                                  {"x": b["x"][:, layer], "y": b["y"][:, layer]}, None, 0)
    parts.append(float(l))
    assert float(m[f"mse/{i}"]) >= 0
  np.testing.assert_allclose(float(total), sum(parts), rtol=1e-5)
