"""Transcoder and cross-layer transcoder files: circuit-tracer's CLT folder and transcoder set,
Gemma Scope 2 CLTs, SAELens transcoders.

References we did not write: the layouts as ../shared/notes/circuits.md 6.2-6.4 describe them
(read here with the safetensors library and PyYAML, never through our loaders) and the forward
passes re-derived from those descriptions in numpy float64 with explicit loops over tokens,
layers and features.  Round trips (export then import) must give bitwise-identical outputs
where the same arrays run the same computation.
"""

import json
import os

import jax
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from jaxcode.errors import ConfigError
from jaxcode.models import sae_formats, sae_io, transcoder_io
from jaxcode.models.sae_io import ExternalSAE
from jaxcode.models.transcoder_io import ExternalCLT

L, D, F, N, K = 3, 8, 12, 10, 3


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _one_line(e):
  assert "\n" not in str(e.value), str(e.value)


def _clt(activation="relu", skip=False, layers=None, seed=0, d_out=D) -> ExternalCLT:
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)            # noqa: E731
  thr = rng.uniform(0.05, 0.4, (L, F)).astype(np.float32) if activation == "jumprelu" else None
  return ExternalCLT(
      f(L, F, D) / np.float32(np.sqrt(D)), f(L, F) * 0.3,
      [f(F, L - l, d_out) * 0.5 for l in range(L)],
      f(L, d_out) * 0.2, activation=activation, threshold=thr,
      k=K if activation == "topk" else None, W_skip=f(L, D, d_out) * 0.3 if skip else None,
      layers=layers, model_name="tiny", cfg={"label": "t"})


def _x(seed=1, lead=(N,)):
  return np.random.default_rng(seed).standard_normal(lead + (L, D)).astype(np.float32)


# ------------------------------------------------------------------ independent numpy reading

def _np_read_ct_clt(directory):
  """The CLT folder as notes 6.3 describe it, read with safetensors.numpy and PyYAML."""
  conf = yaml.safe_load(open(os.path.join(directory, "config.yaml")))
  n = len([f for f in os.listdir(directory) if f.startswith("W_enc_")])
  layers = []
  for l in range(n):
    enc = load_file(os.path.join(directory, f"W_enc_{l}.safetensors"))
    dec = load_file(os.path.join(directory, f"W_dec_{l}.safetensors"))
    layers.append({"W_enc": enc[f"W_enc_{l}"], "b_enc": enc[f"b_enc_{l}"],
                   "b_dec": enc[f"b_dec_{l}"], "threshold": enc.get(f"threshold_{l}"),
                   "W_skip": enc.get(f"W_skip_{l}"), "W_dec": dec[f"W_dec_{l}"]})
  return conf, layers


def _np_act(pre, activation, thr, k):
  if activation == "relu":
    return np.maximum(pre, 0)
  if activation == "jumprelu":                  # circuit-tracer: pre kept where pre > threshold
    return np.where(pre > thr, pre, 0.0)
  out = np.zeros_like(pre)                      # topk: the k largest, then ReLU
  for i in np.argsort(-pre)[:k]:
    out[i] = max(pre[i], 0.0)
  return out


def _np_ct_clt_forward(directory, x_NLD):
  conf, layers = _np_read_ct_clt(directory)
  n = len(layers)
  x = np.asarray(x_NLD, np.float64)
  y = np.zeros(x.shape[:1] + (n, layers[0]["b_dec"].shape[0]))
  for t in range(x.shape[0]):
    acts = []
    for l, p in enumerate(layers):
      w, b = p["W_enc"].astype(np.float64), p["b_enc"].astype(np.float64)
      pre = np.array([w[i] @ x[t, l] + b[i] for i in range(w.shape[0])])
      acts.append(_np_act(pre, conf["activation"], p["threshold"], conf.get("k")))
    for m in range(n):
      out = layers[m]["b_dec"].astype(np.float64).copy()
      for l in range(m + 1):
        for i in range(acts[l].shape[0]):
          out += acts[l][i] * layers[l]["W_dec"][i, m - l].astype(np.float64)
      if layers[m]["W_skip"] is not None:
        out += x[t, m] @ layers[m]["W_skip"].astype(np.float64)
      y[t, m] = out
  return y


def _margins_ok(clt, x):
  """No pre-activation within 1e-4 of a JumpReLU threshold or of a TopK cut."""
  pre = np.einsum("nld,lfd->nlf", x.astype(np.float64), clt.W_enc) + clt.b_enc
  if clt.activation == "jumprelu":
    assert np.abs(pre - clt.threshold).min() > 1e-4
  if clt.activation == "topk":
    s = -np.sort(-pre, axis=-1)
    assert (s[..., K - 1] - s[..., K]).min() > 1e-4


# ------------------------------------------------------------------ circuit-tracer CLT

CASES = [(a, s) for a in ("relu", "jumprelu", "topk") for s in (False, True)]


@pytest.mark.parametrize("activation,skip", CASES)
def test_clt_round_trip_and_numpy_reimplementation(activation, skip, tmp_path):
  clt, x = _clt(activation, skip), _x()
  d = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "clt"), clt)
  assert sorted(os.listdir(tmp_path)) == ["clt"]                       # nothing left beside it
  conf = yaml.safe_load(open(os.path.join(d, "config.yaml")))
  assert conf["model_kind"] == "cross_layer_transcoder" and conf["model_name"] == "tiny"
  assert (conf["feature_input_hook"], conf["feature_output_hook"]) == ("mlp.hook_in",
                                                                      "hook_mlp_out")
  assert conf["activation"] == activation and conf.get("k") == (K if activation == "topk"
                                                                else None)
  enc = load_file(os.path.join(d, "W_enc_1.safetensors"))
  assert enc["W_enc_1"].shape == (F, D) and enc["b_dec_1"].shape == (D,)
  assert ("W_skip_1" in enc) == skip and ("threshold_1" in enc) == (activation == "jumprelu")
  if skip:                                       # stored as is: applied as x @ W_skip_l
    np.testing.assert_array_equal(enc["W_skip_1"], clt.W_skip[1])
  assert load_file(os.path.join(d, "W_dec_1.safetensors"))["W_dec_1"].shape == (F, L - 1, D)

  back = transcoder_io.load_circuit_tracer_clt(d)
  assert (back.activation, back.k, back.hook_in, back.hook_out, back.layers, back.layout) == (
      activation, clt.k, "blocks.{layer}.mlp_in", "blocks.{layer}.mlp_out", (0, 1, 2),
      "circuit_tracer_clt")
  want = np.asarray(transcoder_io.clt_forward(clt, x))
  np.testing.assert_array_equal(np.asarray(transcoder_io.clt_forward(back, x)), want)
  a = np.asarray(transcoder_io.clt_encode(clt, x))
  assert 0 < (a > 0).mean() < 1
  if activation == "topk":
    assert ((a > 0).sum(-1) <= K).all()
  _margins_ok(clt, x)
  r = _rel(want, _np_ct_clt_forward(d, x))
  print(f"{activation} skip={skip}: clt_forward vs numpy reading of the files: {r:.1e}")
  assert r < 1e-5


def test_clt_semantics_and_jit(tmp_path):
  clt, x = _clt("jumprelu", True), _x(lead=(2, 5))
  a = transcoder_io.clt_encode(clt, x)
  assert a.shape == (2, 5, L, F)
  y = np.asarray(transcoder_io.clt_decode(clt, a, x))
  jitted = np.asarray(jax.jit(lambda v: transcoder_io.clt_forward(clt, v))(x))
  assert _rel(jitted, y) < 1e-6
  # layer 0's output sees only layer 0's features: zeroing layer 1-2 codes leaves it unchanged
  a0 = np.asarray(a).copy()
  a0[..., 1:, :] = 0
  np.testing.assert_allclose(np.asarray(transcoder_io.clt_decode(clt, a0, x))[..., 0, :],
                             y[..., 0, :], rtol=1e-6, atol=1e-6)
  with pytest.raises(ConfigError, match="clt_decode needs the input x") as e:
    transcoder_io.clt_decode(clt, a)
  _one_line(e)
  with pytest.raises(ConfigError, match=r"clt_encode: x has shape \(5, 8\): expected \[..., "
                     r"L=3, d_in=8\]"):
    transcoder_io.clt_encode(clt, x[0, :, 0])


def test_clt_layers_hooks_and_negative_thresholds(tmp_path):
  clt = _clt("jumprelu", layers=(4, 5, 6))
  clt.hook_in, clt.hook_out = "blocks.{layer}.resid_mid", "blocks.{layer}.mlp_out"
  clt.threshold[0, :3] = -0.5                    # same outputs once clamped at 0 (docstring)
  d = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "c"), clt)
  conf = yaml.safe_load(open(os.path.join(d, "config.yaml")))
  assert conf["feature_input_hook"] == "hook_resid_mid"
  assert conf["jaxcode"]["layers"] == [4, 5, 6]
  back = sae_formats.load_clt(d)
  assert back.layers == (4, 5, 6) and back.hook_in == "blocks.{layer}.resid_mid"
  assert back.threshold.min() >= 0 and back.cfg["jaxcode"]["cfg"] == {"label": "t"}
  x = _x(3)
  np.testing.assert_array_equal(np.asarray(transcoder_io.clt_forward(back, x)),
                                np.asarray(transcoder_io.clt_forward(clt, x)))
  # explicit TransformerLens names win; without the jaxcode block ours come from them
  d2 = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "c2"), _clt(),
                                               feature_input_hook="ln2.hook_normalized")
  conf = yaml.safe_load(open(os.path.join(d2, "config.yaml")))
  assert conf["feature_input_hook"] == "ln2.hook_normalized"
  del conf["jaxcode"]
  yaml.safe_dump(conf, open(os.path.join(d2, "config.yaml"), "w"))
  back = transcoder_io.load_circuit_tracer_clt(d2)
  assert (back.hook_in, back.hook_out) == ("blocks.{layer}.ln2.hook_normalized",
                                           "blocks.{layer}.mlp_out")


def test_export_replaces_an_earlier_export_atomically(tmp_path, monkeypatch):
  target = str(tmp_path / "out")
  transcoder_io.export_circuit_tracer_clt(target, _clt(seed=0))
  transcoder_io.export_circuit_tracer_clt(target, _clt("topk", seed=5))
  assert transcoder_io.load_circuit_tracer_clt(target).activation == "topk"
  assert sorted(os.listdir(tmp_path)) == ["out"]
  calls = []

  def failing(arrays, path):                     # the disk fills after the first file
    if calls:
      raise OSError("no space left")
    calls.append(path)
    save_file(arrays, path)
  monkeypatch.setattr(transcoder_io, "save_file", failing)
  with pytest.raises(OSError):
    transcoder_io.export_circuit_tracer_clt(target, _clt("jumprelu"))
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path)) == ["out"]                       # old export intact
  assert transcoder_io.load_circuit_tracer_clt(target).activation == "topk"
  os.makedirs(tmp_path / "busy")
  open(tmp_path / "busy" / "notes.txt", "w").close()
  with pytest.raises(ConfigError, match="exists and is not an earlier export") as e:
    transcoder_io.export_circuit_tracer_clt(str(tmp_path / "busy"), _clt())
  _one_line(e)


def test_bytedance_style_folder(tmp_path):
  clt = _clt()
  d = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "bd"), clt)
  os.remove(os.path.join(d, "config.yaml"))
  for l in range(L):                              # no encoder bias; extra decoder norms
    p = os.path.join(d, f"W_enc_{l}.safetensors")
    w = load_file(p)
    del w[f"b_enc_{l}"]
    w[f"W_dec_norm_{l}"] = np.ones(F, np.float32)
    save_file(w, p)
  back = transcoder_io.load_circuit_tracer_clt(d)
  assert (back.b_enc == 0).all() and back.activation == "relu"
  assert back.hook_in == "blocks.{layer}.resid_mid"          # circuit-tracer's default
  json.dump({"d_feature": F, "k": 4}, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(ConfigError, match="k=4: a TopK taken jointly over layers"):
    transcoder_io.load_circuit_tracer_clt(d)


def test_clt_bad_inputs(tmp_path):
  d = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "c"), _clt("jumprelu"))
  os.rename(os.path.join(d, "W_dec_1.safetensors"), os.path.join(d, "x"))
  with pytest.raises(ConfigError, match=r"missing W_dec_1.safetensors") as e:
    transcoder_io.load_circuit_tracer_clt(d)
  _one_line(e)
  os.rename(os.path.join(d, "x"), os.path.join(d, "W_dec_1.safetensors"))
  os.remove(os.path.join(d, "W_enc_1.safetensors"))
  with pytest.raises(ConfigError, match=r"missing W_enc_1.safetensors \(have layers \[0, 2\]\): "
                     "a cross-layer transcoder covers consecutive layers") as e:
    sae_formats.load_clt(d)
  _one_line(e)
  bad = _clt()
  bad.W_dec[1] = bad.W_dec[1][:, :1]
  with pytest.raises(ConfigError, match=r"W_dec\[1\] has shape \(12, 1, 8\), expected "
                     r"\(12, 2, 8\) = \[F, L-l, d_out\]") as e:
    transcoder_io.export_circuit_tracer_clt(str(tmp_path / "b"), bad)
  _one_line(e)
  with pytest.raises(ConfigError, match=r"threshold has shape \(3, 11\), expected \(3, 12\)"):
    transcoder_io.validate_clt(
        ExternalCLT(**{**_clt("jumprelu").__dict__, "threshold": np.zeros((L, F - 1))}), "t")
  with pytest.raises(ConfigError, match=r"layers=\(0, 2, 3\): a cross-layer transcoder covers "
                     r"consecutive layers \(expected 3 consecutive increasing integers >= 0, "
                     r"e.g. \(0, 1, 2\)\)") as e:
    transcoder_io.validate_clt(_clt(layers=(0, 2, 3)), "t")
  _one_line(e)
  with pytest.raises(ConfigError, match="k=0: expected an integer in"):
    transcoder_io.validate_clt(ExternalCLT(**{**_clt("topk").__dict__, "k": 0}), "t")
  weird = _clt()
  weird.hook_in = "blocks.{layer}.mystery"
  with pytest.raises(ConfigError, match=r"hookpoint 'blocks.\{layer\}.mystery' has no "
                     "TransformerLens name") as e:
    transcoder_io.export_circuit_tracer_clt(str(tmp_path / "w"), weird)
  _one_line(e)
  assert not os.path.exists(tmp_path / "w") and not os.path.exists(tmp_path / "b")


# ------------------------------------------------------------------ circuit-tracer transcoder set

def _plt(layer, activation="jumprelu", skip=True, seed=0, **kw) -> ExternalSAE:
  rng = np.random.default_rng(seed + layer)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)            # noqa: E731
  return ExternalSAE(
      activation, f(D, F) / np.float32(np.sqrt(D)), f(F) * 0.3, f(F, D) * 0.5, f(D) * 0.2,
      threshold=rng.uniform(0.05, 0.4, F).astype(np.float32) if activation == "jumprelu"
      else None, k=K if activation == "topk" else None,
      kind="skip_transcoder" if skip else "transcoder", W_skip=f(D, D) * 0.3 if skip else None,
      hook_in=f"blocks.{layer}.mlp_in", hook_out=f"blocks.{layer}.mlp_out", **kw)


def _np_plt(directory, layer, x):
  """layer_{l}.safetensors as notes 6.2 describe it, in numpy float64."""
  w = {k: v.astype(np.float64) for k, v in
       load_file(os.path.join(directory, f"layer_{layer}.safetensors")).items()}
  pre = x.astype(np.float64) @ w["W_enc"].T + w["b_enc"]
  if "activation_function.threshold" in w:
    a = np.where(pre > w["activation_function.threshold"], pre, 0.0)
  elif "k" in w:
    a = np.stack([_np_act(p, "topk", None, int(w["k"])) for p in pre])
  else:
    a = np.maximum(pre, 0)
  y = a @ w["W_dec"] + w["b_dec"]
  return y + x @ w["W_skip"].T if "W_skip" in w else y


@pytest.mark.parametrize("activation,skip", CASES)
def test_plt_set_round_trip(activation, skip, tmp_path):
  act = {"relu": "standard"}.get(activation, activation)
  layers = (0, 1, 2)
  saes = [_plt(l, act, skip) for l in layers]
  d = transcoder_io.export_circuit_tracer_plts(str(tmp_path / "set"), saes, layers,
                                               model_name="tiny")
  conf = yaml.safe_load(open(os.path.join(d, "config.yaml")))
  assert (conf["model_kind"], conf["feature_input_hook"], conf["feature_output_hook"],
          conf["activation"]) == ("transcoder_set", "mlp.hook_in", "hook_mlp_out", activation)
  w = load_file(os.path.join(d, "layer_2.safetensors"))
  np.testing.assert_array_equal(w["W_enc"], saes[2].W_enc.T)          # rows = features
  if skip:
    np.testing.assert_array_equal(w["W_skip"], saes[2].W_skip.T)      # [d_out, d_in]
  if activation == "topk":
    assert w["k"].shape == () and int(w["k"]) == K
  back = transcoder_io.load_circuit_tracer_plts(d)
  x = _x()[:, 0]
  for l in layers:
    b = back[l]
    assert (b.architecture, b.kind, b.hook_in, b.hook_out, b.layout) == (
        act, saes[l].kind, f"blocks.{l}.mlp_in", f"blocks.{l}.mlp_out", "circuit_tracer_plts")
    want = np.asarray(sae_io.forward(saes[l], x))
    np.testing.assert_array_equal(np.asarray(sae_io.forward(b, x)), want)
    assert _rel(want, _np_plt(d, l, x)) < 1e-5


def test_plt_set_folds_scales_and_loads_through_load_dictionary(tmp_path):
  saes = [_plt(l, "standard", True, input_scale=0.5, output_scale=2.0) for l in (3, 4)]
  saes[1].apply_b_dec_to_input = True
  d = transcoder_io.export_circuit_tracer_plts(str(tmp_path / "s"), saes, [3, 4],
                                               feature_output_hook="hook_mlp_out")
  assert sae_formats.detect_layout(d) == "circuit_tracer_plts"
  x = _x()[:, 0]
  for l, sae in zip((3, 4), saes):
    for ext in (sae_formats.load_dictionary(d, layer=l),
                sae_formats.load_dictionary(os.path.join(d, f"layer_{l}.safetensors"))):
      assert ext.hook_in == f"blocks.{l}.mlp_in" and ext.input_scale == 1.0
      assert _rel(sae_io.forward(ext, x), sae_io.forward(sae, x)) < 1e-5
  with pytest.raises(ConfigError, match=r"a circuit-tracer transcoder set of layers \[3, 4\]: "
                     "pass layer=") as e:
    sae_formats.load_dictionary(d)
  _one_line(e)
  with pytest.raises(ConfigError, match="apply to SAELens files only"):
    sae_formats.load_dictionary(d, norm_scaling_factor=2.0)


def test_plt_set_bad_inputs(tmp_path):
  with pytest.raises(ConfigError, match=r"2 transcoders for layers \(0, 1, 2\): expected one "
                     "per layer"):
    transcoder_io.export_circuit_tracer_plts(str(tmp_path / "a"), [_plt(0), _plt(1)], (0, 1, 2))
  with pytest.raises(ConfigError, match=r"activations \['jumprelu', 'relu'\] differ"):
    transcoder_io.export_circuit_tracer_plts(str(tmp_path / "a"),
                                             [_plt(0), _plt(1, "standard")], (0, 1))
  sae = _plt(0)
  sae.kind, sae.W_skip = "sae", None
  with pytest.raises(ConfigError, match="layer 0 is a jumprelu sae: expected a transcoder"):
    transcoder_io.export_circuit_tracer_plts(str(tmp_path / "a"), [sae], (0,))
  with pytest.raises(ConfigError, match=r"layers=\(0, 0\): expected distinct integers"):
    transcoder_io.export_circuit_tracer_plts(str(tmp_path / "a"), [_plt(0), _plt(0)], (0, 0))
  nohook = _plt(0)
  nohook.hook_in = None
  with pytest.raises(ConfigError, match="pass feature_input_hook="):
    transcoder_io.export_circuit_tracer_plts(str(tmp_path / "a"), [nohook], (0,))
  assert not os.path.exists(tmp_path / "a")
  d = transcoder_io.export_circuit_tracer_plts(str(tmp_path / "b"), [_plt(0)], (0,))
  p = os.path.join(d, "layer_0.safetensors")
  w = load_file(p)
  w["activation_function.threshold"][0] = -1.0
  save_file(w, p)
  with pytest.raises(ConfigError, match="negative JumpReLU thresholds") as e:
    transcoder_io.load_circuit_tracer_plts(d)
  _one_line(e)
  w["activation_function.threshold"][0] = 0.1
  w["W_dec"] = np.ascontiguousarray(w["W_dec"][:, :5])
  save_file(w, p)
  with pytest.raises(ConfigError, match=r"b_dec has shape \(8,\), expected \(5,\)"):
    sae_formats.load_dictionary(p)


# ------------------------------------------------------------------ Gemma Scope 2 CLT

def _gs2_clt_files(folder, affine, seed=3):
  """params_layer_{l}.safetensors as notes 6.4 describe them: w_dec [F, L, d] with slot m
  writing to layer m; slots m < l are unused (filled with junk here to prove it)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder)
  files = []
  for l in range(L):
    w = {"w_enc": rng.standard_normal((D, F)) / np.sqrt(D),
         "w_dec": rng.standard_normal((F, L, D)) * 0.5, "b_enc": rng.standard_normal(F) * 0.3,
         "b_dec": rng.standard_normal(D) * 0.2, "threshold": rng.uniform(0.05, 0.4, F)}
    w["w_dec"][:, :l] = 1e3
    if affine:
      w["affine_skip_connection"] = rng.standard_normal((D, D)) * 0.3      # x @ A
    files.append({k: v.astype(np.float32) for k, v in w.items()})
    save_file(files[-1], os.path.join(folder, f"params_layer_{l}.safetensors"))
  json.dump({"architecture": "jump_relu", "model_name": "google/gemma-3-270m",
             "hf_hook_point_in": "model.layers.{layer}.pre_feedforward_layernorm.output"},
            open(os.path.join(folder, "config.json"), "w"))
  return files


def _np_gs2_clt(files, x):
  y = np.zeros(x.shape[:1] + (L, D))
  x = x.astype(np.float64)
  acts = []
  for l, w in enumerate(files):
    pre = x[:, l] @ w["w_enc"].astype(np.float64) + w["b_enc"]
    acts.append(np.maximum(pre, 0) * (pre > w["threshold"]))
  for m in range(L):
    y[:, m] = files[m]["b_dec"]
    for l in range(m + 1):
      y[:, m] += acts[l] @ files[l]["w_dec"][:, m].astype(np.float64)
    if "affine_skip_connection" in files[m]:
      y[:, m] += x[:, m] @ files[m]["affine_skip_connection"].astype(np.float64)
  return y


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_scope_2_clt(affine, tmp_path):
  folder = str(tmp_path / ("width_16k_l0_small" + ("_affine" if affine else "")))
  files = _gs2_clt_files(folder, affine)
  assert sae_formats.detect_layout(folder) == "gemma_scope_2_clt"
  clt = sae_formats.load_clt(folder)
  assert clt.n_layers == L and clt.layers == (0, 1, 2) and clt.layout == "gemma_scope_2_clt"
  np.testing.assert_array_equal(clt.W_enc[L - 1], files[L - 1]["w_enc"].T)   # the last layer
  np.testing.assert_array_equal(clt.W_dec[L - 1], files[L - 1]["w_dec"][:, L - 1:])
  assert (clt.W_skip is not None) == affine and clt.model_name == "google/gemma-3-270m"
  assert clt.hook_in == "blocks.{layer}.mlp_in" and clt.cfg["hf_hook_point_in"].startswith("m")
  x = _x(4)
  want = _np_gs2_clt(files, x)
  got = np.asarray(transcoder_io.clt_forward(clt, x))
  print(f"Gemma Scope 2 CLT affine={affine}: max rel diff {_rel(got, want):.1e}")
  assert _rel(got, want) < 1e-5 and _rel(got[:, L - 1], want[:, L - 1]) < 1e-5
  # exported in circuit-tracer's layout it reads back with identical outputs
  d = transcoder_io.export_circuit_tracer_clt(str(tmp_path / "ct"), clt)
  np.testing.assert_array_equal(
      np.asarray(transcoder_io.clt_forward(transcoder_io.load_circuit_tracer_clt(d), x)), got)


def test_gemma_scope_2_clt_refusals(tmp_path):
  folder = str(tmp_path / "clt")
  _gs2_clt_files(folder, affine=False)
  one = os.path.join(folder, "params_layer_1.safetensors")
  assert sae_formats.detect_layout(one) == "gemma_scope_2_clt"
  with pytest.raises(ConfigError, match="a cross-layer transcoder \\(gemma_scope_2_clt\\), not "
                     "one dictionary: read it with sae_formats.load_clt") as e:
    sae_formats.load_dictionary(folder)
  _one_line(e)
  with pytest.raises(ConfigError, match="one file of a cross-layer transcoder") as e:
    sae_formats.load_clt(one)
  _one_line(e)
  with pytest.raises(ConfigError, match="expected the folder of params_layer"):
    sae_formats.load_gemma_scope_2_clt(one)
  w = load_file(one)
  save_file({**w, "w_dec": w["w_dec"][:, :2]}, one)
  with pytest.raises(ConfigError, match=r"w_dec has shape \(12, 2, 8\), expected \(12, 3, "
                     r"d_out\) = \[F, L, d_out\] for a CLT of 3 layers") as e:
    sae_formats.load_clt(folder)
  _one_line(e)
  os.remove(one)
  with pytest.raises(ConfigError, match=r"missing params_layer_1.safetensors \(have layers "
                     r"\[0, 2\]\)"):
    sae_formats.load_clt(folder)
  with pytest.raises(ConfigError, match="holds no cross-layer transcoder"):
    sae_formats.load_clt(folder, layout="saelens")


# ------------------------------------------------------------------ SAELens transcoders

@pytest.mark.parametrize("activation,skip", [("standard", False), ("standard", True),
                                             ("jumprelu", False), ("jumprelu", True)])
def test_saelens_transcoder_round_trip(activation, skip, tmp_path):
  sae = _plt(2, activation, skip)
  d = sae_io.export_saelens_external(str(tmp_path / "t"), sae, {"model_name": "tiny"})
  conf = json.load(open(os.path.join(d, "cfg.json")))
  arch = ("jumprelu_" if activation == "jumprelu" else "") + (
      "skip_transcoder" if skip else "transcoder")
  assert (conf["architecture"], conf["d_out"], conf["apply_b_dec_to_input"]) == (arch, D, False)
  assert (conf["metadata"]["hook_name"], conf["metadata"]["hook_name_out"],
          conf["metadata"]["model_name"]) == ("blocks.2.mlp_in", "blocks.2.mlp_out", "tiny")
  w = load_file(os.path.join(d, "sae_weights.safetensors"))
  x = _x()[:, 0].astype(np.float64)
  pre = x @ w["W_enc"] + w["b_enc"]
  a = np.maximum(pre, 0) * (pre > w["threshold"] if "threshold" in w else 1.0)
  want = a @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if skip else 0.0)
  back = sae_formats.load_dictionary(d)
  assert (back.kind, back.hook_in, back.hook_out) == (sae.kind, sae.hook_in, sae.hook_out)
  got = np.asarray(sae_io.forward(back, x))
  np.testing.assert_array_equal(got, np.asarray(sae_io.forward(sae, x)))
  assert _rel(got, want) < 1e-5


def test_saelens_external_folds_and_refuses(tmp_path):
  rng = np.random.default_rng(9)
  sae = ExternalSAE("topk", rng.standard_normal((D, F)).astype(np.float32),
                    rng.standard_normal(F).astype(np.float32),
                    rng.standard_normal((F, D)).astype(np.float32),
                    rng.standard_normal(D).astype(np.float32), k=K, apply_b_dec_to_input=True,
                    input_scale=0.25, output_scale=0.25, hook_in="blocks.1.resid_post",
                    hook_out="blocks.1.resid_post")
  d = sae_io.export_saelens_external(str(tmp_path / "s"), sae, {"label": "x"})
  conf = json.load(open(os.path.join(d, "cfg.json")))
  assert conf["architecture"] == "topk" and conf["k"] == K and "d_out" not in conf
  assert conf["metadata"]["label"] == "x" and conf["metadata"]["hook_name_out"] is None
  back = sae_io.load_saelens(d)
  x = _x()[:, 0] * 4
  assert back.input_scale == 1.0 and not back.apply_b_dec_to_input
  assert _rel(sae_io.forward(back, x), sae_io.forward(sae, x)) < 1e-5
  with pytest.raises(ConfigError, match="has transcoders with ReLU or JumpReLU only") as e:
    sae_io.export_saelens_external(str(tmp_path / "k"), _plt(0, "topk"), {})
  _one_line(e)
  with pytest.raises(ConfigError, match="activation 'groupmax' has no SAELens architecture"):
    sae_io.export_saelens_external(str(tmp_path / "g"), ExternalSAE(
        "groupmax", sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k=3), {})
