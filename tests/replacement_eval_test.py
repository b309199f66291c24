"""Replacement-model evaluation against hand-computed references on the tiny decoder fixtures.

References we did not take from the module under test:
- an exact "transcoder" whose codes are the MLP's hidden neurons, written here from the
  fixture's parameters (Llama's gated SiLU MLP; Gemma 3's gated tanh-GELU MLP and its
  post-feed-forward (1 + w) RMSNorm): spliced in at every layer it must leave the CE equal to
  the clean CE, KL 0 and FVU 0;
- the zero and mean ablations rerun with explicit `edits` on the Flax module, with the means
  and the cross-entropies and KLs computed in numpy;
- a cross-layer transcoder (layer 1's codes write to layers 1 and 2) and a per-layer set of
  imported (skip) transcoders, unrolled by hand: one forward per covered layer, each
  splicing the numpy predictions of the layers before it as constants.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from jaxcode.analysis.replacement_eval import (Replacement, make_replacement_from_external,
                                               replacement_eval)
from jaxcode.errors import ConfigError
from jaxcode.models.lm import load_pretrained
from jaxcode.models.sae_io import ExternalSAE

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
LMS = {}
IN, OUT = "blocks.{layer}.mlp_in", "blocks.{layer}.mlp_out"


def lm_of(arch):
  if arch not in LMS:
    LMS[arch] = load_pretrained(os.path.join(FIX, arch), tokenizer=False)
  return LMS[arch]


def inputs(n=5, t=12, seed=0):
  """Random ids, right-padded masks of varied lengths, BOS (position 0) marked special."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(4, 64, size=(n, t)).astype(np.int32)
  lengths = np.array([t, t - 2, 7, t, 3][:n])
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  special = np.zeros((n, t), bool)
  special[:, 0] = True
  return ids * mask, mask, special


def forward(lm, ids, mask, splice=None, values=None):
  """All hookpoints and logits (float64 numpy), with values[o] ([D] or [B, T, D]) replacing
  hookpoint o at the splice positions."""
  splice = np.zeros(ids.shape, bool) if splice is None else splice
  sp = jnp.asarray(splice)[..., None]
  edits = {o: (lambda v: lambda y: jnp.where(sp, jnp.asarray(v, y.dtype), y))(v)
           for o, v in (values or {}).items()}
  rec = lm.module.apply({"params": lm.params}, jnp.asarray(ids), jnp.asarray(mask), lm.n_layers,
                        True, edits=edits)     # eager: no compile per set of edits
  return jax.tree.map(lambda a: np.asarray(a, np.float64), rec)


def ce_kl(logits, clean, ids, mask):
  """Mean next-token CE and KL(p_clean || p) over pairs of attended tokens (numpy)."""
  lp = logits - logsumexp(logits, -1, keepdims=True)
  lc = clean - logsumexp(clean, -1, keepdims=True)
  valid = mask[:, :-1].astype(bool) & mask[:, 1:].astype(bool)
  nll = -np.take_along_axis(lp[:, :-1], ids[:, 1:, None].astype(np.int64), -1)[..., 0]
  kl = np.sum(np.exp(lc) * (lc - lp), -1)[:, :-1]
  return nll[valid].mean(), kl[valid].mean()


def fvu(y, y_hat, splice):
  y, y_hat = y[splice], y_hat[splice]
  return np.sum((y - y_hat) ** 2) / np.sum((y - y.mean(0)) ** 2)


# ---------------------------------------------------------------- exact MLP "transcoder"

def _rms1p(x, w, eps):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * (1.0 + w)


def exact_replacement(lm, layers):
  """codes = the MLP hidden neurons act(x W_gate) * (x W_up); y_hat = codes W_down (Gemma:
  then the post-feed-forward norm), from the fixture's parameters."""
  gemma = lm.model_type.startswith("gemma")
  act = (lambda z: jax.nn.gelu(z, approximate=True)) if gemma else jax.nn.silu
  p = [lm.params[f"layers_{l}"] for l in layers]
  consts = {"gate": [q["gate"]["kernel"] for q in p], "up": [q["up"]["kernel"] for q in p],
            "down": [q["down"]["kernel"] for q in p]}
  if gemma:
    consts["post"] = [q["post_feedforward_layernorm"]["scale"] for q in p]
  eps = lm.config.rms_norm_eps

  def encode(c, j, x):
    return act(x @ c["gate"][j]) * (x @ c["up"][j])

  def decode(c, m, codes, x):
    y = codes[m] @ c["down"][m]
    return _rms1p(y, c["post"][m], eps) if gemma else y
  return Replacement(tuple(layers), IN, OUT, consts, encode, decode)


def check_exact(lm, res, ids, mask, special):
  assert res["ce_replacement"] == pytest.approx(res["ce_clean"], rel=1e-5, abs=1e-6)
  assert abs(res["kl_replacement"]) < 1e-6
  assert abs(res["ce_zero"] - res["ce_clean"]) > 1e-3      # the ablation matters
  assert res["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
  assert res["ce_recovered_mean"] == pytest.approx(1.0, abs=1e-3)
  assert [row["layer"] for row in res["per_layer"]] == res["layers"]
  for row in res["per_layer"]:
    assert row["fvu_spliced"] < 1e-8 and row["fvu_clean"] < 1e-8 and row["mse_clean"] < 1e-10
  ce_clean, _ = ce_kl(*(forward(lm, ids, mask)["logits"],) * 2, ids, mask)
  assert res["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
  assert res["n_splice_tokens"] == (mask.astype(bool) & ~special).sum()
  assert res["n_predictions"] == (mask[:, :-1] * mask[:, 1:]).sum()


def test_exact_mlp_replacement_recovers_the_clean_gemma3():
  lm = lm_of("gemma3_text")
  ids, mask, special = inputs()
  res = replacement_eval(lm, ids, mask, exact_replacement(lm, (0, 1, 2)), special=special,
                         batch_size=2)
  check_exact(lm, res, ids, mask, special)
  assert res["layers"] == [0, 1, 2]
  assert res["mean_ablation"] == "clean forwards over the first 5 rows"
  check_ablations(lm, res, ids, mask, mask.astype(bool) & ~special,
                  [OUT.format(layer=l) for l in (0, 1, 2)], 5)


# ---------------------------------------------------------------- ablations

def check_ablations(lm, res, ids, mask, splice, outs, mean_rows):
  """ce/kl of the zero and mean ablations against explicit edits and numpy means of the
  clean hook_out over the splice positions of the first mean_rows rows."""
  clean = forward(lm, ids, mask)
  zero = forward(lm, ids, mask, splice, {o: np.zeros(clean[o].shape[-1]) for o in outs})
  ce, kl = ce_kl(zero["logits"], clean["logits"], ids, mask)
  assert res["ce_zero"] == pytest.approx(ce, rel=1e-5)
  assert res["kl_zero"] == pytest.approx(kl, rel=1e-4)
  means = {o: clean[o][:mean_rows][splice[:mean_rows]].mean(0) for o in outs}
  ce, kl = ce_kl(forward(lm, ids, mask, splice, means)["logits"], clean["logits"], ids, mask)
  assert res["ce_mean"] == pytest.approx(ce, rel=1e-5)
  assert res["kl_mean"] == pytest.approx(kl, rel=1e-4)


def test_zero_and_mean_ablation_equal_explicit_edits_and_numpy():
  lm = lm_of("llama")
  ids, mask, special = inputs()
  splice = mask.astype(bool) & ~special
  rep = exact_replacement(lm, (0, 1))
  outs = [OUT.format(layer=l) for l in (0, 1)]
  res = replacement_eval(lm, ids, mask, rep, special=special, batch_size=3, mean_rows=2)
  check_exact(lm, res, ids, mask, special)           # the exact MLP on Llama's gated SiLU
  check_ablations(lm, res, ids, mask, splice, outs, 2)
  assert res["mean_ablation"] == "clean forwards over the first 2 rows"
  clean = forward(lm, ids, mask)
  given = {o: clean[o][splice].mean(0) + 0.1 for o in outs}   # means from elsewhere
  res2 = replacement_eval(lm, ids, mask, rep, special=special, batch_size=3, means=given)
  assert res2["mean_ablation"] == "given"
  assert res2["ce_zero"] == res["ce_zero"] and res2["ce_mean"] != res["ce_mean"]
  ce, kl = ce_kl(forward(lm, ids, mask, splice, given)["logits"], clean["logits"], ids, mask)
  assert res2["ce_mean"] == pytest.approx(ce, rel=1e-5)
  assert res2["kl_mean"] == pytest.approx(kl, rel=1e-4)


# ---------------------------------------------------------------- CLT and imported transcoders

def unrolled(lm, ids, mask, splice, layers, enc, dec):
  """Hand-unrolled replacement model: forward m splices the numpy predictions of layers
  before m as constants and reads layer m's input and true output."""
  values, codes, ys, y_hats = {}, [], [], []
  for m, l in enumerate(layers):
    rec = forward(lm, ids, mask, splice, values)
    x = rec[IN.format(layer=l)]
    codes.append(enc(m, x))
    ys.append(rec[OUT.format(layer=l)])
    y_hats.append(dec(m, codes, x))
    values[OUT.format(layer=l)] = y_hats[-1]
  return forward(lm, ids, mask, splice, values)["logits"], ys, y_hats


def clt(rng, layers, d=32, f=16):
  """A CLT-shaped replacement: codes relu(x W_enc_j + b_j); y_hat_m = sum_{j<=m} a_j W_(j,m)
  + b_m. Returns the Replacement and numpy (enc, dec)."""
  n = len(layers)
  w = {"W_enc": [rng.normal(0, 0.3, (d, f)) for _ in layers],
       "b_enc": [rng.normal(0, 0.1, f) for _ in layers],
       "W_dec": {f"{j}_{m}": rng.normal(0, 0.3, (f, d)) for m in range(n) for j in range(m + 1)},
       "b_dec": [rng.normal(0, 0.1, d) for _ in layers]}
  w = jax.tree.map(lambda a: a.astype(np.float32), w)

  def encode(c, j, x):
    return jax.nn.relu(x @ c["W_enc"][j] + c["b_enc"][j])

  def decode(c, m, codes, x):
    return sum(codes[j] @ c["W_dec"][f"{j}_{m}"] for j in range(m + 1)) + c["b_dec"][m]

  def enc_np(j, x):
    return np.maximum(x @ w["W_enc"][j] + w["b_enc"][j], 0)

  def dec_np(m, codes, x):
    return sum(codes[j] @ w["W_dec"][f"{j}_{m}"] for j in range(m + 1)) + w["b_dec"][m]
  return Replacement(tuple(layers), IN, OUT, w, encode, decode), enc_np, dec_np


def external(rng, layers, d=32, f=24):
  """Imported transcoders: a skip transcoder (standard ReLU) at the first layer, a JumpReLU
  transcoder at the second, and numpy (enc, dec) from ExternalSAE's documented semantics."""
  r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  saes = {layers[0]: ExternalSAE("standard", r(d, f), r(f), r(f, d), r(d), kind="skip_transcoder",
                                 W_skip=r(d, d)),
          layers[1]: ExternalSAE("jumprelu", r(d, f), r(f), r(f, d), r(d), kind="transcoder",
                                 threshold=np.abs(r(f)))}
  s = [saes[l] for l in layers]

  def enc_np(j, x):
    pre = x @ s[j].W_enc + s[j].b_enc
    return np.maximum(pre, 0) * (pre > s[j].threshold if s[j].threshold is not None else 1)

  def dec_np(m, codes, x):
    y = codes[m] @ s[m].W_dec + s[m].b_dec
    return y + x @ s[m].W_skip if s[m].W_skip is not None else y
  return make_replacement_from_external(saes), enc_np, dec_np


def check_against_unrolled(lm, res, ids, mask, splice, layers, enc, dec):
  clean = forward(lm, ids, mask)
  logits, ys, y_hats = unrolled(lm, ids, mask, splice, layers, enc, dec)
  ce, kl = ce_kl(logits, clean["logits"], ids, mask)
  assert res["ce_replacement"] == pytest.approx(ce, rel=1e-4)
  assert res["kl_replacement"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
  assert kl > 1e-3                                         # the replacement matters
  for m, (l, row) in enumerate(zip(layers, res["per_layer"])):
    assert row["layer"] == l and row["hook_out"] == OUT.format(layer=l)
    assert row["fvu_spliced"] == pytest.approx(fvu(ys[m], y_hats[m], splice), rel=1e-4)
    y_clean = clean[OUT.format(layer=l)]
    assert row["fvu_clean"] == pytest.approx(fvu(y_clean, y_hats[m], splice), rel=1e-4)
  if len(layers) > 1 and layers[1] == layers[0] + 1:
    assert res["per_layer"][1]["fvu_spliced"] != pytest.approx(res["per_layer"][1]["fvu_clean"])


def test_clt_and_imported_transcoders_equal_hand_unrolled_passes():
  lm = lm_of("gemma3_text")
  ids, mask, special = inputs(seed=1)
  splice = mask.astype(bool) & ~special
  rng = np.random.default_rng(0)
  rep_clt, enc_c, dec_c = clt(rng, (1, 2))
  rep_ext, enc_e, dec_e = external(rng, (0, 2))
  res = replacement_eval(lm, ids, mask, {"clt": rep_clt, "plt": rep_ext}, special=special,
                         batch_size=2)
  check_against_unrolled(lm, res["clt"], ids, mask, splice, (1, 2), enc_c, dec_c)
  check_against_unrolled(lm, res["plt"], ids, mask, splice, (0, 2), enc_e, dec_e)
  assert res["clt"]["ce_clean"] == res["plt"]["ce_clean"]
  assert res["clt"]["ce_zero"] != res["plt"]["ce_zero"]    # ablations of their own layers
  for key, layers in (("clt", (1, 2)), ("plt", (0, 2))):
    check_ablations(lm, res[key], ids, mask, splice, [OUT.format(layer=l) for l in layers], 5)


# ---------------------------------------------------------------- bad inputs

def _bad_cases(lm):
  good = exact_replacement(lm, (0, 1))
  r = lambda **kw: dataclasses.replace(good, **kw)
  half = jax.tree.map(lambda a: a[:16], good.consts)    # weights of a 16-wide model
  sae = ExternalSAE("standard", *(np.zeros(s, np.float32) for s in ((32, 8), 8, (8, 32), 32)),
                    kind="transcoder")
  return [
      (r(hook_in="blocks.{layer}.resid_post"), {}, "output hookpoint .blocks.0.mlp_out. before the input one"),
      (r(layers=(0, 5)), {}, "layer 5 does not exist"),
      (r(layers=()), {}, "non-empty tuple"),
      (r(layers=(1, 0)), {}, "strictly increasing"),
      (r(hook_in="blocks.0.mlp_in"), {}, "gives 'blocks.0.mlp_in' at layer 1"),
      (r(hook_out="blocks.{l}.mlp_out"), {}, "expected a pattern like"),
      (r(hook_out="blocks.{layer}.mlp"), {}, "expected 'blocks.{layer}.<one of"),
      (r(consts=half), {}, r"encode\(consts, 0, x \[2, 32\]\) at blocks.0.mlp_in failed"),
      (r(decode=lambda c, m, a, x: x[:, :8]), {}, r"returned shape \(2, 8\): expected \(2, 32\)"),
      (r(consts={"k": 3}), {}, "consts holds a value of type int"),
      (good, {"batch_size": 0}, "batch_size=0"),
      (good, {"input_ids": np.full((5, 12), 64)}, r"input_ids in \[64, 64\]: expected token"),
      (good, {"mean_rows": 9}, "mean_rows=9"),
      (good, {"special": np.zeros((2, 2), bool)}, "special of shape"),
      (good, {"means": {}}, "means has no entry for 'blocks.0.mlp_out'"),
      ({"a": good, "b": r(layers=(0, 3))}, {}, "replacement 'b': layer 3"),
      ({}, {}, "non-empty dict"),
      (make_replacement_from_external({0: dataclasses.replace(
          sae, W_enc=np.zeros((16, 8), np.float32))}), {}, "d_in=32 does not match|failed"),
  ]


def test_bad_inputs_raise_one_line_config_errors():
  lm = lm_of("llama")
  ids, mask, _ = inputs()
  for rep, kw, pattern in _bad_cases(lm):
    with pytest.raises(ConfigError, match=pattern) as e:
      replacement_eval(lm, kw.pop("input_ids", ids), mask, rep, **kw)
    assert "\n" not in str(e.value), str(e.value)
  sae = ExternalSAE("standard", *(np.zeros(s, np.float32) for s in ((32, 8), 8, (8, 32), 32)))
  with pytest.raises(ConfigError, match="kind='sae': expected a transcoder"):
    make_replacement_from_external({0: sae})
  with pytest.raises(ConfigError, match="hook_in is 'blocks.1.mlp_in': expected 'blocks.0"):
    make_replacement_from_external({0: dataclasses.replace(sae, kind="transcoder",
                                                           hook_in="blocks.1.mlp_in")})
  bert = load_pretrained(os.path.join(FIX, "bert"), tokenizer=False)
  with pytest.raises(ConfigError, match="expected a causal LM"):
    replacement_eval(bert, ids, mask, exact_replacement(lm, (0, 1)))
