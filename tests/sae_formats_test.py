"""Published dictionary layouts: Gemma Scope 2, Llama Scope, sparsify, and layout detection.

Each test writes a small random file in the layout (safetensors written by the safetensors
library, bf16 where the published files are bf16), imports it, and compares codes and outputs
with a numpy (float64) forward pass written here from the format's own documentation and code:
the Gemma Scope 2 notebook's JumpReLU (google-deepmind/gemma_penzai), OpenMOSS
Language-Model-SAEs' SparseAutoEncoder.encode/decode in 'dataset-wise' mode, and EleutherAI
sparsify's SparseCoder.encode/decode/forward.  Never by calling our code.
"""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxcode.errors import ConfigError
from jaxcode.models import sae_formats, sae_io

D, O, M, B = 12, 10, 32, 16


def _close(name, got, want, tol=1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  r = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
  print(f"{name}: max rel diff {r:.1e}")
  assert r < tol, f"{name}: relative difference {r:.2e} > {tol}"


def _save(path, arrays):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)


def _f64(arrays):
  return {k: np.asarray(v, np.float64) for k, v in arrays.items()}


def _margin(score, thr):
  """The test is well-posed: no pre-activation within 1e-4 of its threshold."""
  assert np.abs(score - thr).min() > 1e-4


# ------------------------------------------------------------------ Gemma Scope 2

def _gs2(rng, d_out=D, affine=False):
  w = {"w_enc": rng.standard_normal((D, M)) / np.sqrt(D), "b_enc": rng.standard_normal(M) * 0.2,
       "w_dec": rng.standard_normal((M, d_out)), "b_dec": rng.standard_normal(d_out),
       "threshold": rng.uniform(0.1, 0.5, M)}
  if affine:
    w["affine_skip_connection"] = rng.standard_normal((D, d_out)) * 0.3     # [d_in, d_out]
  return {k: v.astype(np.float32) for k, v in w.items()}


@pytest.mark.parametrize("variant", ["resid_post", "transcoder", "transcoder_affine"])
def test_gemma_scope_2(variant, tmp_path):
  rng = np.random.default_rng(10)
  tc, affine = variant != "resid_post", variant.endswith("affine")
  w = _gs2(rng, d_out=O if tc else D, affine=affine)
  folder = tmp_path / variant / f"layer_3_width_16k_l0_small{'_affine' if affine else ''}"
  _save(str(folder / "params.safetensors"), w)
  conf = {"architecture": "jump_relu", "type": "transcoder" if tc else "sae", "width": M,
          "affine_connection": affine, "model_name": "gemma-v3-270m-pt",
          "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output" if tc
          else "model.layers.3.output"}
  if tc:
    conf["hf_hook_point_out"] = "model.layers.3.post_feedforward_layernorm.output"
  json.dump(conf, open(folder / "config.json", "w"))
  ext = sae_formats.load_dictionary(str(folder))
  assert ext.layout == "gemma_scope_2" and ext.d_out == (O if tc else D)
  assert ext.kind == ("skip_transcoder" if affine else "transcoder" if tc else "sae")
  assert ext.hook_in == conf["hf_hook_point_in"]
  assert ext.hook_out == conf.get("hf_hook_point_out", conf["hf_hook_point_in"])
  x = rng.standard_normal((B, D))
  p = _f64(w)
  pre = x @ p["w_enc"] + p["b_enc"]
  _margin(pre, p["threshold"])
  acts = (pre > p["threshold"]) * np.maximum(pre, 0)
  y = acts @ p["w_dec"] + p["b_dec"] + (x @ p["affine_skip_connection"] if affine else 0)
  _close(f"gemma scope 2 {variant} codes", sae_io.encode(ext, x), acts)
  _close(f"gemma scope 2 {variant} output", sae_io.forward(ext, x), y)


def test_gemma_scope_2_without_config_and_clt_refused(tmp_path):
  rng = np.random.default_rng(11)
  w = _gs2(rng, affine=True)
  _save(str(tmp_path / "a" / "params.safetensors"), w)
  ext = sae_formats.load_dictionary(str(tmp_path / "a" / "params.safetensors"))
  assert ext.kind == "skip_transcoder" and ext.hook_in is None
  clt = {**_gs2(rng), "w_dec": rng.standard_normal((M, 1, D)).astype(np.float32)}
  _save(str(tmp_path / "clt" / "params.safetensors"), clt)
  with pytest.raises(ConfigError, match=r"w_dec has shape \(32, 1, 12\) with a layer axis: a "
                     "cross-layer transcoder file, not supported"):
    sae_formats.load_dictionary(str(tmp_path / "clt"))


# ------------------------------------------------------------------ Llama Scope

def _llama(rng, tmp_path, name, d_out=D, **hp):
  w = {"encoder.weight": rng.standard_normal((M, D)) / np.sqrt(D),
       "encoder.bias": rng.standard_normal(M) * 0.3,
       "decoder.weight": rng.standard_normal((d_out, M)) * rng.uniform(0.2, 2.0, (1, M)),
       "decoder.bias": rng.standard_normal(d_out) * 0.5}
  w = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}      # published files are bf16
  folder = tmp_path / name
  _save(str(folder / "checkpoints" / "final.safetensors"), w)
  hp = {"d_model": D, "d_sae": M, "hook_point_in": "blocks.8.hook_resid_post",
        "hook_point_out": "blocks.8.hook_resid_post", "act_fn": "jumprelu", "top_k": 50,
        "norm_activation": "dataset-wise", "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False, **hp}
  json.dump(hp, open(folder / "hyperparams.json", "w"))
  return str(folder), _f64({k: v.astype(np.float32) for k, v in w.items()}), hp


def _llama_ref(p, hp, x):
  """lm_saes SparseAutoEncoder: normalise, encode (gate on pre * ||W_D col||), decode, undo."""
  a_in = np.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["in"]
  a_out = np.sqrt(hp["d_model"]) / hp["dataset_average_activation_norm"]["out"]
  x_n = x * a_in
  if hp["apply_decoder_bias_to_pre_encoder"]:
    x_n = x_n - p["decoder.bias"]
  pre = x_n @ p["encoder.weight"].T + p["encoder.bias"]
  score = pre * np.linalg.norm(p["decoder.weight"], axis=0) if hp.get(
      "sparsity_include_decoder_norm", True) else pre
  return pre, score, a_out


@pytest.mark.parametrize("case", ["sae", "transcoder"])
def test_llama_scope(case, tmp_path):
  rng = np.random.default_rng(12)
  tc = case == "transcoder"
  hp = {"dataset_average_activation_norm": {"in": 6.3, "out": 2.1 if tc else 6.3},
        "sparsity_include_decoder_norm": not tc, "apply_decoder_bias_to_pre_encoder": tc}
  if tc:
    hp["hook_point_in"], hp["hook_point_out"] = "blocks.8.ln2.hook_normalized", "blocks.8.mlp"
  x = rng.standard_normal((B, D)) * 3
  folder, p, hp = _llama(rng, tmp_path, case, **hp)
  pre, score, a_out = _llama_ref(p, hp, x)
  s = np.sort(score[score > 0])          # a threshold that cuts the data, in its widest gap
  i = len(s) * 2 // 5 + int(np.argmax(np.diff(s[len(s) * 2 // 5 - 1:len(s) * 4 // 5])))
  theta = float(s[i - 1] + s[i]) / 2
  hp["jump_relu_threshold"] = theta
  json.dump(hp, open(os.path.join(folder, "hyperparams.json"), "w"))
  _margin(score, theta)
  f = pre * (score > theta)
  y = (f @ p["decoder.weight"].T + p["decoder.bias"]) / a_out
  ext = sae_formats.load_dictionary(folder)
  assert ext.layout == "llama_scope" and ext.kind == case
  assert ext.hook_in == hp["hook_point_in"] and ext.hook_out == hp["hook_point_out"]
  assert 0 < (f > 0).mean() < 0.5
  _close(f"llama scope {case} codes", sae_io.encode(ext, x), f)
  _close(f"llama scope {case} output", sae_io.forward(ext, x), y)


def test_llama_scope_bad_hyperparams(tmp_path):
  rng = np.random.default_rng(13)
  norms = {"in": 5.0, "out": 5.0}
  cases = [({"jump_relu_threshold": 0.1, "act_fn": "topk"}, "act_fn='topk': expected"),
           ({"jump_relu_threshold": -1.0}, r"jump_relu_threshold=-1.0: expected a finite"),
           ({"jump_relu_threshold": 0.1, "norm_activation": "token-wise"},
            "norm_activation='token-wise'"),
           ({"jump_relu_threshold": 0.1, "dataset_average_activation_norm": {"in": 5.0}},
            r"dataset_average_activation_norm.out=None")]
  for i, (hp, match) in enumerate(cases):
    folder, _, _ = _llama(rng, tmp_path, f"bad{i}", **{"dataset_average_activation_norm": norms,
                                                        **hp})
    with pytest.raises(ConfigError, match=match):
      sae_formats.load_llama_scope(folder)


# ------------------------------------------------------------------ sparsify

def _sparsify(rng, tmp_path, name, **cfg):
  w = {"encoder.weight": rng.standard_normal((M, D)) / np.sqrt(D),
       "encoder.bias": rng.standard_normal(M) * 0.2,
       "W_dec": rng.standard_normal((M, D)), "b_dec": rng.standard_normal(D) * 0.5}
  if cfg.get("skip_connection"):
    w["W_skip"] = rng.standard_normal((D, D)) * 0.2
  w = {k: v.astype(np.float32) for k, v in w.items()}
  folder = tmp_path / name / "layers.6.mlp"
  _save(str(folder / "sae.safetensors"), w)
  cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
         "num_latents": M, "k": 4, "multi_topk": False, "skip_connection": False,
         "transcode": False, "d_in": D, **cfg}
  json.dump(cfg, open(folder / "cfg.json", "w"))
  return str(folder), _f64(w)


@pytest.mark.parametrize("case", ["sae", "transcoder_skip", "groupmax"])
def test_sparsify(case, tmp_path):
  rng = np.random.default_rng(14)
  tc = case == "transcoder_skip"
  folder, p = _sparsify(rng, tmp_path, case, transcode=tc, skip_connection=tc,
                        activation="groupmax" if case == "groupmax" else "topk")
  ext = sae_formats.load_dictionary(folder)
  assert ext.layout == "sparsify" and ext.hook_in == "layers.6.mlp"
  assert ext.kind == ("skip_transcoder" if tc else "sae")
  x = rng.standard_normal((B, D))
  pre = np.maximum((x if tc else x - p["b_dec"]) @ p["encoder.weight"].T + p["encoder.bias"], 0)
  f = np.zeros_like(pre)
  if case == "groupmax":                 # k groups of M/k contiguous latents, max of each
    g = pre.reshape(B, 4, M // 4)
    idx = g.argmax(-1) + np.arange(0, M, M // 4)
  else:
    idx = np.argsort(-pre, axis=1)[:, :4]
  np.put_along_axis(f, idx, np.take_along_axis(pre, idx, 1), 1)
  y = f @ p["W_dec"] + p["b_dec"] + (x @ p["W_skip"].T if tc else 0)
  _close(f"sparsify {case} codes", sae_io.encode(ext, x), f)
  _close(f"sparsify {case} output", sae_io.forward(ext, x), y)


def test_sparsify_bad_cfg(tmp_path):
  rng = np.random.default_rng(15)
  for i, (cfg, match) in enumerate([({"activation": "relu"}, "activation='relu': expected"),
                                    ({"embed_skip": True}, "embed_skip=true is not supported"),
                                    ({"num_latents": 64}, "num_latents=64 but encoder.weight"),
                                    ({"activation": "groupmax", "k": 5},
                                     "groupmax k=5 does not divide d_sae=32")]):
    folder, _ = _sparsify(rng, tmp_path, f"bad{i}", **cfg)
    with pytest.raises(ConfigError, match=match) as e:
      sae_formats.load_dictionary(folder)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ detection

def test_load_dictionary_detects_and_refuses(tmp_path):
  rng = np.random.default_rng(16)
  folder, _ = _sparsify(rng, tmp_path, "s")
  assert sae_formats.detect_layout(folder) == "sparsify"
  assert sae_formats.detect_layout(os.path.join(folder, "sae.safetensors")) == "sparsify"
  np.savez(str(tmp_path / "params.npz"), W_enc=np.ones((D, M), np.float32),
           W_dec=np.ones((M, D), np.float32), b_enc=np.zeros(M, np.float32),
           b_dec=np.zeros(D, np.float32), threshold=np.zeros(M, np.float32))
  assert sae_formats.load_dictionary(str(tmp_path / "params.npz")).layout == "gemma_scope_1"
  os.makedirs(tmp_path / "odd")
  open(tmp_path / "odd" / "model.bin", "w").close()
  with pytest.raises(ConfigError, match=r"odd: no known dictionary layout \(found model.bin\); "
                     r"known: SAELens \(cfg.json \+ sae_weights.safetensors\); sparsify") as e:
    sae_formats.load_dictionary(str(tmp_path / "odd"))
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="does not exist"):
    sae_formats.load_dictionary(str(tmp_path / "missing"))
  with pytest.raises(ConfigError, match=r"layout='hdf5': expected one of"):
    sae_formats.load_dictionary(folder, layout="hdf5")
  with pytest.raises(ConfigError, match="apply to SAELens files only"):
    sae_formats.load_dictionary(folder, norm_scaling_factor=2.0)


def test_width_mismatch_of_a_loaded_dictionary(tmp_path):
  folder, _ = _sparsify(np.random.default_rng(17), tmp_path, "w")
  ext = sae_formats.load_dictionary(folder)
  with pytest.raises(ConfigError, match=f"^dictionary d_in={D} does not match hookpoint "
                     "blocks.6.mlp_in of width 640$"):
    sae_io.check_width(ext, 640, "blocks.6.mlp_in")
