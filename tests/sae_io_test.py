"""SAE export/import: SAELens layout (6.x and pre-6.0), round trip, Gemma Scope params.npz.

References we did not write: the SAELens file layout (W_enc [d_in, d_sae], W_dec [d_sae, d_out],
b_enc, b_dec, threshold, W_skip [d_out, d_in] in sae_weights.safetensors, written and read back
with the safetensors library) and each architecture's forward pass re-derived in numpy (float64)
from SAELens 6.54's documented semantics (topk_sae.py, jumprelu_sae.py, transcoder.py,
batchtopk_sae.py), never by calling our code.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxcode.errors import ConfigError
from jaxcode.models import sae, sae_io
from tests.sae_fixture import sae_config

D, O, M, B = 12, 10, 32, 16


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _close(name, got, want, tol=1e-6):
  r = _rel(got, want)
  print(f"{name}: max rel diff {r:.1e}")
  assert r < tol, f"{name}: relative difference {r:.2e} > {tol}"


def _one_sae(arch, **kw):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((64, D)) * 5 + 3).astype(np.float32)   # needs normalisation
  cfg = sae_config(architecture=arch, d_in=D, d_sae=40, **kw)
  params, aux = sae.make_init(cfg, x)(jax.random.key(0))
  params, aux = sae.select(params, 0), sae.select(aux, 0)
  params["b_enc"] = jnp.asarray(rng.standard_normal(40) * 0.1, jnp.float32)
  params["W_dec"] = params["W_dec"] * 1.3
  if "threshold" in params:
    params["threshold"] = jnp.asarray(rng.uniform(0.0, 0.3, 40), jnp.float32)
  aux["threshold"] = jnp.float32(0.15)
  return cfg, params, aux, x


@pytest.mark.parametrize("arch", sae.ARCHITECTURES)
def test_export_import_round_trip(arch, tmp_path):
  cfg, params, aux, x = _one_sae(arch, k=5, normalisation="sqrt_d")
  d = sae_io.export_saelens(str(tmp_path / arch), cfg, params, aux, metadata={"hook": "h"})
  w = load_file(os.path.join(d, "sae_weights.safetensors"))
  conf = json.load(open(os.path.join(d, "cfg.json")))
  assert w["W_enc"].shape == (12, 40) and w["W_dec"].shape == (40, 12)
  assert w["b_enc"].shape == (40,) and w["b_dec"].shape == (12,)
  assert ("threshold" in w) == (conf["architecture"] == "jumprelu")
  assert conf["d_in"] == 12 and conf["d_sae"] == 40 and conf["normalize_activations"] == "none"
  ext = sae_io.load_saelens(d)
  f_ours = np.asarray(sae.encode(cfg, params, aux, jnp.asarray(x)))
  f_ext = np.asarray(sae_io.encode(ext, x))
  assert (f_ours > 0).sum() > 0
  np.testing.assert_allclose(f_ext, f_ours, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(sae_io.decode(ext, f_ext), sae.decode(cfg, params, aux, f_ours),
                             rtol=1e-4, atol=1e-4)


def test_export_writes_saelens6_metadata(tmp_path):
  cfg, params, aux, _ = _one_sae("topk", k=5)
  d = sae_io.export_saelens(str(tmp_path / "e"), cfg, params, aux, metadata={"label": "k5"},
                            model_name="gpt2", hook_name="blocks.3.hook_resid_post",
                            context_size=128, dataset_path="corpus/x", prepend_bos=True)
  conf = json.load(open(os.path.join(d, "cfg.json")))
  meta = conf["metadata"]
  assert int(meta["sae_lens_version"].split(".")[0]) >= 6     # SAELens then keeps `metadata`
  assert (meta["model_name"], meta["hook_name"], meta["context_size"], meta["dataset_path"],
          meta["prepend_bos"]) == ("gpt2", "blocks.3.hook_resid_post", 128, "corpus/x", True)
  for key in ("hook_head_index", "model_class_name", "hf_hook_name", "sae_lens_training_version"):
    assert key in meta
  assert meta["label"] == "k5" and meta["jaxcode_architecture"] == "topk"
  assert conf["k"] == 5 and conf["rescale_acts_by_decoder_norm"] is False
  ext = sae_io.load_saelens(d)
  assert ext.hook_in == ext.hook_out == "blocks.3.hook_resid_post"


# ------------------------------------------------------------------ SAELens files by hand

def _weights(rng, d_out=D, threshold=False):
  w = {"W_enc": rng.standard_normal((D, M)) / np.sqrt(D), "b_enc": rng.standard_normal(M) * 0.2,
       "W_dec": rng.standard_normal((M, d_out)) * rng.uniform(0.3, 3.0, (M, 1)),
       "b_dec": rng.standard_normal(d_out) * 0.5}
  if threshold:
    w["threshold"] = rng.uniform(0.1, 0.6, M)
  return {k: np.asarray(v, np.float32) for k, v in w.items()}


def _write(path, conf, w, version="6.54.12"):
  os.makedirs(path, exist_ok=True)
  if version is not None:
    conf = {**conf, "metadata": {"sae_lens_version": version, **conf.get("metadata", {})}}
  json.dump(conf, open(os.path.join(path, "cfg.json"), "w"))
  save_file({k: np.ascontiguousarray(v) for k, v in w.items()},
            os.path.join(path, "sae_weights.safetensors"))
  return str(path)


def _topk_np(pre, k):
  out = np.zeros_like(pre)
  idx = np.argsort(-pre, axis=1)[:, :k]
  np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
  return out


def _f64(w):
  return {k: np.asarray(v, np.float64) for k, v in w.items()}


def _abstopk_np(pre, k):
  out = np.zeros_like(pre)
  idx = np.argsort(-np.abs(pre), axis=1)[:, :k]       # largest |pre|, signed values, no ReLU
  np.put_along_axis(out, idx, np.take_along_axis(pre, idx, 1), 1)
  return out


@pytest.mark.parametrize("arch,rescale", [("topk", True), ("topk", False), ("abstopk", True)])
def test_saelens_topk_rescale_acts_by_decoder_norm(arch, rescale, tmp_path):
  rng = np.random.default_rng(1)
  w, x = _weights(rng), rng.standard_normal((B, D))
  conf = {"architecture": arch, "d_in": D, "d_sae": M, "k": 4, "apply_b_dec_to_input": True,
          "rescale_acts_by_decoder_norm": rescale, "normalize_activations": "none"}
  ext = sae_io.load_saelens(_write(tmp_path / "t", conf, w))
  p = _f64(w)
  n = np.linalg.norm(p["W_dec"], axis=1)
  pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]            # SAELens TopKSAE.encode
  act = _topk_np if arch == "topk" else _abstopk_np
  f_ref = act(pre * n if rescale else pre, 4)
  y_ref = (f_ref / n if rescale else f_ref) @ p["W_dec"] + p["b_dec"]   # act_times_W_dec
  f = np.asarray(sae_io.encode(ext, x))
  _close(f"saelens {arch} rescale={rescale} codes", f, f_ref)
  _close(f"saelens {arch} rescale={rescale} recon", sae_io.decode(ext, f), y_ref)
  other = act(pre if rescale else pre * n, 4)                  # the flag matters on this data
  assert (np.abs(other - f_ref) > 1e-3).any(axis=1).mean() > 0.5


def test_saelens_batchtopk_checkpoint_is_its_inference_jumprelu(tmp_path):
  rng = np.random.default_rng(2)
  w, x = _weights(rng), rng.standard_normal((B, D))
  p = _f64(w)
  n = np.linalg.norm(p["W_dec"], axis=1)
  acts = np.maximum(((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]) * n, 0)
  k = 3
  order = np.sort(acts.ravel())[::-1]
  thr = (order[k * B - 1] + order[k * B]) / 2       # between the kept and the first dropped
  w["topk_threshold"] = np.asarray(thr, np.float64)  # SAELens stores it in float64
  conf = {"architecture": "batchtopk", "d_in": D, "d_sae": M, "k": float(k),
          "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": True,
          "topk_threshold_lr": 0.01, "normalize_activations": "none"}
  ext = sae_io.load_saelens(_write(tmp_path / "b", conf, w))
  assert ext.architecture == "jumprelu" and np.all(ext.threshold == np.float32(thr))
  batch_topk = np.where(acts >= order[k * B - 1], acts, 0)    # BatchTopK of this batch
  jump = acts * (acts > thr)                                  # SAELens' inference JumpReLU
  np.testing.assert_array_equal(batch_topk, jump)
  f = np.asarray(sae_io.encode(ext, x))
  _close("saelens batchtopk->jumprelu codes", f, jump)
  _close("saelens batchtopk->jumprelu recon", sae_io.decode(ext, f),
         (jump / n) @ p["W_dec"] + p["b_dec"])


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder",
                                  "jumprelu_skip_transcoder"])
def test_saelens_transcoders(arch, tmp_path):
  rng = np.random.default_rng(3)
  jump, skip = arch.startswith("jumprelu"), "skip" in arch
  w, x = _weights(rng, d_out=O, threshold=jump), rng.standard_normal((B, D))
  if skip:
    w["W_skip"] = (rng.standard_normal((O, D)) * 0.3).astype(np.float32)    # [d_out, d_in]
  conf = {"architecture": arch, "d_in": D, "d_sae": M, "d_out": O, "apply_b_dec_to_input": False,
          "normalize_activations": "none",
          "metadata": {"hook_name": "blocks.2.ln2.hook_normalized",
                       "hook_name_out": "blocks.2.hook_mlp_out"}}
  ext = sae_io.load_saelens(_write(tmp_path / arch, conf, w))
  assert (ext.kind, ext.d_out) == ("skip_transcoder" if skip else "transcoder", O)
  assert (ext.hook_in, ext.hook_out) == ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
  p = _f64(w)
  pre = x @ p["W_enc"] + p["b_enc"]                          # transcoders: no b_dec subtraction
  f_ref = np.maximum(pre, 0) * (pre > p["threshold"] if jump else 1)
  y_ref = f_ref @ p["W_dec"] + p["b_dec"] + (x @ p["W_skip"].T if skip else 0)
  _close(f"saelens {arch} codes", sae_io.encode(ext, x), f_ref)
  _close(f"saelens {arch} output", sae_io.forward(ext, x), y_ref)
  if skip:
    with pytest.raises(ConfigError, match="decode needs the input"):
      sae_io.decode(ext, f_ref)


def test_saelens_pre6_flat_config(tmp_path):
  rng = np.random.default_rng(4)
  w, x = _weights(rng), rng.standard_normal((B, D))
  w["scaling_factor"] = rng.uniform(0.5, 2.0, M).astype(np.float32)
  conf = {"d_in": D, "d_sae": M, "hook_point": "blocks.1.hook_resid_pre", "model_name": "gpt2",
          "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5},
          "finetuning_scaling_factor": True, "normalize_activations": False}
  ext = sae_io.load_saelens(_write(tmp_path / "old", conf, w, version=None))
  assert ext.architecture == "topk" and ext.k == 5 and ext.apply_b_dec_to_input  # old default
  assert ext.hook_in == "blocks.1.hook_resid_pre" and ext.cfg["metadata"]["model_name"] == "gpt2"
  p = _f64(w)
  f_ref = _topk_np((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 5)
  f = sae_io.encode(ext, x)
  _close("saelens pre-6 topk codes", f, f_ref)
  _close("saelens pre-6 recon", sae_io.decode(ext, f),
         (f_ref * p["scaling_factor"]) @ p["W_dec"] + p["b_dec"])


def test_saelens_expected_average_only_in_needs_its_factor(tmp_path):
  rng = np.random.default_rng(5)
  w, x = _weights(rng, threshold=True), rng.standard_normal((B, D))
  conf = {"architecture": "jumprelu", "d_in": D, "d_sae": M, "apply_b_dec_to_input": False,
          "normalize_activations": "expected_average_only_in"}
  path = _write(tmp_path / "n", conf, w)
  with pytest.raises(ConfigError, match="pass norm_scaling_factor="):
    sae_io.load_saelens(path)
  ext = sae_io.load_saelens(path, norm_scaling_factor=2.5)
  p = _f64(w)
  pre = 2.5 * x @ p["W_enc"] + p["b_enc"]    # fold_activation_norm_scaling_factor(2.5)
  f_ref = pre * (pre > p["threshold"])
  _close("saelens expected_average_only_in codes", sae_io.encode(ext, x), f_ref)
  _close("saelens expected_average_only_in recon", sae_io.decode(ext, f_ref),
         f_ref @ (p["W_dec"] / 2.5) + p["b_dec"] / 2.5)


def test_gemma_scope_npz(tmp_path):
  rng = np.random.default_rng(1)
  d, m = 6, 16
  arrs = {"W_enc": rng.standard_normal((d, m)), "W_dec": rng.standard_normal((m, d)),
          "b_enc": rng.standard_normal(m) * 0.1, "b_dec": rng.standard_normal(d),
          "threshold": rng.uniform(0.2, 0.8, m)}
  p = str(tmp_path / "params.npz")
  np.savez(p, **{k: v.astype(np.float32) for k, v in arrs.items()})
  ext = sae_io.load_gemma_scope_npz(p)
  x = rng.standard_normal((9, d))
  pre = x @ arrs["W_enc"] + arrs["b_enc"]
  f = pre * (pre > arrs["threshold"])          # Gemma Scope JumpReLU, numpy
  _close("gemma scope 1 codes", sae_io.encode(ext, x), f)
  _close("gemma scope 1 recon", sae_io.decode(ext, f), f @ arrs["W_dec"] + arrs["b_dec"])


# ------------------------------------------------------------------ bad input, one line each

def _bad(tmp_path, name, conf, w, match, **kw):
  path = _write(tmp_path / name, {"d_in": D, "d_sae": M, "apply_b_dec_to_input": False,
                                  **conf}, w)
  with pytest.raises(ConfigError, match=match) as e:
    sae_io.load_saelens(path, **kw)
  assert "\n" not in str(e.value)


def test_import_errors(tmp_path):
  rng = np.random.default_rng(6)
  w = _weights(rng)
  with pytest.raises(ConfigError, match="missing cfg.json"):
    sae_io.load_saelens(str(tmp_path))
  np.savez(str(tmp_path / "bad.npz"), W_enc=np.zeros((2, 3)))
  with pytest.raises(ConfigError, match="missing arrays"):
    sae_io.load_gemma_scope_npz(str(tmp_path / "bad.npz"))
  _bad(tmp_path, "arch", {"architecture": "gated"}, w, r"architecture='gated': expected one of")
  _bad(tmp_path, "shape", {"architecture": "standard"}, {**w, "b_dec": w["b_dec"][:5]},
       r"b_dec has shape \(5,\), expected \(12,\)")
  _bad(tmp_path, "dims", {"architecture": "standard", "d_sae": 7}, w, "cfg d_sae=7 but")
  _bad(tmp_path, "k", {"architecture": "topk", "k": M + 1}, w, "k=33: expected an integer in")
  _bad(tmp_path, "bt", {"architecture": "batchtopk", "k": 2.0}, w, "needs the scalar 'topk_thr")
  _bad(tmp_path, "jr", {"architecture": "jumprelu"}, w, "needs 'threshold' or 'log_threshold'")
  _bad(tmp_path, "ln", {"architecture": "standard", "normalize_activations": "layer_norm"}, w,
       "normalize_activations='layer_norm'")
  _bad(tmp_path, "tc", {"architecture": "transcoder", "apply_b_dec_to_input": True}, w,
       "never subtract b_dec")
  cfg, params, aux, _ = _one_sae("relu")
  ext = sae_io.load_saelens(sae_io.export_saelens(str(tmp_path / "r"), cfg, params, aux))
  with pytest.raises(ConfigError, match="input d_in=5 does not match"):
    sae_io.encode(ext, np.zeros((2, 5)))


def test_check_width():
  ext = sae_io.ExternalSAE("standard", np.zeros((2304, 4), np.float32), np.zeros(4, np.float32),
                           np.zeros((4, 2304), np.float32), np.zeros(2304, np.float32))
  sae_io.check_width(ext, 2304, "blocks.3.resid_post")
  with pytest.raises(ConfigError, match="^dictionary d_in=2304 does not match hookpoint "
                     "blocks.3.resid_post of width 640$"):
    sae_io.check_width(ext, 640, "blocks.3.resid_post")
  with pytest.raises(ConfigError, match="d_out=2304 does not match hookpoint mlp_out of width"):
    sae_io.check_width(ext, 2304, "mlp_in", width_out=640, hookpoint_out="mlp_out")
