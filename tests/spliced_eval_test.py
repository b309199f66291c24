"""Spliced-in evaluation: identity / zero reconstructions and analytic ablations.

References we did not write:
- HF transformers' PyTorch logits (tests/fixtures/lm/<arch>/reference.safetensors) for the
  clean next-token cross-entropy, computed here with numpy;
- analytic ground truths from the raw checkpoint tensors: zero-ablating the last block's
  output makes GPT-2's logits at every spliced position the constant wte @ ln_f.bias
  (LayerNorm of 0 is its bias), and BERT's MLM logits E @ LN(gelu(b_transform)) + b;
- scikit-learn's PCA: a rank-k PCA reconstruction spliced in must show explained variance
  equal to the sum of PCA's first k explained_variance_ratio_.
Identity reconstruction must give CE-recovered 1 and KL 0; zero reconstruction gives 0.
"""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.special import erf, logsumexp

from jaxcode.analysis.spliced_eval import sae_reconstructor, spliced_eval
from jaxcode.models.lm import load_pretrained, minilm_path
from jaxcode.errors import ConfigError
from tests.sae_fixture import sae_config

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
LMS = {}


def lm_of(arch):
  if arch not in LMS:
    LMS[arch] = load_pretrained(minilm_path() if arch == "minilm" else os.path.join(FIX, arch))
  return LMS[arch]


def ref_inputs(arch):
  r = load_file(os.path.join(FIX, arch, "reference.safetensors"))
  lm = lm_of(arch)
  special = np.isin(r["input_ids"], lm.tokenizer.all_special_ids) if arch == "bert" else None
  return r, special


def identity(x):
  return x


def zero(x):
  return 0.0 * x


def _ln(x, g, b, eps):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * g + b


def check_identity_and_zero(res):
  ident, z = res["identity"], res["zero"]
  assert abs(ident["ce_zero"] - ident["ce_clean"]) > 1e-3   # the ablation must matter
  assert ident["ce_recovered"] == pytest.approx(1.0, abs=1e-5)
  assert abs(ident["kl_sae"]) < 1e-6 and ident["kl_score"] == pytest.approx(1.0, abs=1e-5)
  assert ident["recon_explained_variance"] == pytest.approx(1.0, abs=1e-6)
  assert z["ce_recovered"] == pytest.approx(0.0, abs=1e-5)
  assert z["kl_score"] == pytest.approx(0.0, abs=1e-5)
  assert z["ce_clean"] == ident["ce_clean"] and z["ce_zero"] == ident["ce_zero"]


def causal_clean_ce(r):
  """Next-token CE from HF's PyTorch logits, in numpy."""
  lp = r["logits"] - logsumexp(r["logits"], axis=-1, keepdims=True)
  m = r["attention_mask"].astype(bool)
  valid = m[:, :-1] & m[:, 1:]
  nll = -np.take_along_axis(lp[:, :-1], r["input_ids"][:, 1:, None], -1)[..., 0]
  return nll[valid].mean(), valid, lp


def test_gpt2_identity_zero_analytic_ablation_and_sae():
  import jax
  from jaxcode.models import sae as sae_lib
  lm = lm_of("gpt2")
  r, _ = ref_inputs("gpt2")
  cfg = sae_config(architecture="topk", d_in=32, d_sae=64, k=8)
  x = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
  params, aux = sae_lib.make_init(cfg, x)(jax.random.key(0))
  sae = sae_reconstructor(cfg, sae_lib.select(params, 0), sae_lib.select(aux, 0))
  res = spliced_eval(lm, r["input_ids"], r["attention_mask"], "blocks.1.resid_post",
                     {"identity": identity, "zero": zero, "sae": sae}, batch_size=1)
  check_identity_and_zero(res)
  assert res["identity"]["mode"] == "causal"
  ce_clean, valid, lp_clean = causal_clean_ce(r)
  assert res["identity"]["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
  assert res["identity"]["n_predictions"] == valid.sum()
  # zero at the last block: every spliced position's logits are wte @ ln_f.bias
  w = load_file(os.path.join(FIX, "gpt2", "model.safetensors"))
  key = lambda k: w[k] if k in w else w["transformer." + k]
  c = key("wte.weight") @ key("ln_f.bias")
  lp_zero = c - logsumexp(c)
  tgt = r["input_ids"][:, 1:]
  assert res["zero"]["ce_zero"] == pytest.approx(-lp_zero[tgt][valid].mean(), rel=1e-5)
  kl = np.sum(np.exp(lp_clean[:, :-1]) * (lp_clean[:, :-1] - lp_zero), -1)
  assert res["zero"]["kl_zero"] == pytest.approx(kl[valid].mean(), rel=1e-4)
  assert np.isfinite(res["sae"]["ce_sae"]) and res["sae"]["kl_sae"] > 0


def test_neox_identity_zero_and_pca_explained_variance_matches_sklearn():
  from sklearn.decomposition import PCA
  lm = lm_of("gpt_neox")
  r, _ = ref_inputs("gpt_neox")
  hook = "blocks.0.resid_post"
  m = r["attention_mask"].astype(bool)
  x = r[hook][m].astype(np.float64)                  # HF's activations at the attended tokens
  pca = PCA(n_components=4).fit(x)
  mean = pca.mean_.astype(np.float32)
  v = pca.components_.T.astype(np.float32)          # closed-over arrays: hoisted to arguments
  res = spliced_eval(lm, r["input_ids"], r["attention_mask"], hook,
                     {"identity": identity, "zero": zero,
                      "pca": lambda x: mean + (x - mean) @ v @ v.T})
  check_identity_and_zero(res)
  assert res["identity"]["ce_clean"] == pytest.approx(causal_clean_ce(r)[0], rel=1e-5)
  assert res["pca"]["recon_explained_variance"] == pytest.approx(
      pca.explained_variance_ratio_.sum(), abs=1e-4)
  assert res["pca"]["n_splice_tokens"] == len(x)
  assert 0 < res["pca"]["kl_sae"] < res["pca"]["kl_zero"] or res["pca"]["kl_score"] < 1


def test_bert_mlm_identity_zero_analytic_ablation_and_half():
  from jaxcode.analysis.spliced_eval import mlm_positions, splice_positions
  lm = lm_of("bert")
  r, special = ref_inputs("bert")
  res = spliced_eval(lm, r["input_ids"], r["attention_mask"], "blocks.1.resid_post",
                     {"identity": identity, "zero": zero, "half": lambda x: 0.5 * x},
                     special=special, mask_prob=0.5, seed=3)
  check_identity_and_zero(res)
  assert res["zero"]["mode"] == "mlm"
  picked = mlm_positions(splice_positions(r["attention_mask"], special), 0.5, 3)
  assert res["zero"]["n_masked"] == picked.sum() > 0
  assert not (picked & special).any()
  # zero at the last block: the MLM logits there are E @ LN(gelu(b_transform)) + b
  w = load_file(os.path.join(FIX, "bert", "model.safetensors"))
  b_t = w["cls.predictions.transform.dense.bias"]
  h = 0.5 * b_t * (1 + erf(b_t / np.sqrt(2)))              # exact gelu of the bias
  h = _ln(h, w["cls.predictions.transform.LayerNorm.weight"],
          w["cls.predictions.transform.LayerNorm.bias"], lm.config.layer_norm_eps)
  c = w["bert.embeddings.word_embeddings.weight"] @ h + w["cls.predictions.bias"]
  lp = c - logsumexp(c)
  assert res["zero"]["ce_zero"] == pytest.approx(-lp[r["input_ids"][picked]].mean(), rel=1e-5)
  half = res["half"]
  assert half["kl_sae"] > 0 and half["kl_score"] < 1.0
  assert half["recon_explained_variance"] < 1.0


def test_minilm_has_no_head_so_embedding_scores():
  lm = lm_of("minilm")
  ids, mask = lm.tokenize(["The weather is lovely today.", "def f(x): return x + 1"])
  special = np.isin(ids, lm.tokenizer.all_special_ids)
  res = spliced_eval(lm, ids, mask, "blocks.2.resid_post", {"identity": identity, "zero": zero},
                     special=special)
  ident, z = res["identity"], res["zero"]
  assert ident["mode"] == "embedding" and ident["n_sequences"] == 2
  assert ident["cos_sae"] == pytest.approx(1.0, abs=1e-6)
  assert ident["embedding_recovered"] == pytest.approx(1.0, abs=1e-4)
  assert ident["final_rel_err_sae"] < 1e-10
  assert z["cos_zero"] < 0.99 and z["embedding_recovered"] == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ConfigError, match="no LM head"):
    spliced_eval(lm, ids, mask, "blocks.2.resid_post", identity, mode="mlm")


def test_bad_input():
  lm = lm_of("gpt2")
  r, _ = ref_inputs("gpt2")
  args = (lm, r["input_ids"], r["attention_mask"])
  with pytest.raises(ConfigError, match="layer 7 does not exist"):
    spliced_eval(*args, "blocks.7.resid_post", identity)
  with pytest.raises(ConfigError, match="mode='mlm'"):
    spliced_eval(*args, "blocks.0.resid_post", identity, mode="mlm")
  with pytest.raises(ConfigError, match="expected one array of the input's shape"):
    spliced_eval(*args, "blocks.0.resid_post", lambda x: x[:, :3])
