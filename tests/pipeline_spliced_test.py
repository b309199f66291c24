"""The spliced-evaluation stage on a causal LM (the tiny GPT-NeoX fixture).

Ground truth is analytic: an SAE whose encoder is [I, -I] and decoder [I; -I] reconstructs
every activation exactly (relu(x) - relu(-x) = x), so splicing it in must leave the
next-token cross-entropy unchanged (CE loss recovered 1, KL 0); an SAE with a zero decoder
is zero ablation (CE loss recovered 0, KL equal to the zero-ablated KL).
"""

import json
import os

import numpy as np
import pytest
from ml_collections import ConfigDict
from safetensors.numpy import save_file

from jaxcode.errors import ConfigError
from jaxcode.models.lm import load_pretrained
from jaxcode.pipeline import spliced

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "gpt_neox")


def _write_sae(path, w_enc, w_dec):
  os.makedirs(path)
  d_in, d_sae = w_enc.shape
  conf = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
          "apply_b_dec_to_input": False, "normalize_activations": "none"}
  with open(os.path.join(path, "cfg.json"), "w") as f:
    json.dump(conf, f)
  save_file({"W_enc": w_enc.astype(np.float32), "b_enc": np.zeros(d_sae, np.float32),
             "W_dec": w_dec.astype(np.float32), "b_dec": np.zeros(d_in, np.float32)},
            os.path.join(path, "sae_weights.safetensors"))
  return path


def _blocks(tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  words = "the model is a tiny random test of attention and residual stream sparse feature"
  for i in range(6):
    (docs / f"d{i}.txt").write_text(" ".join(np.random.default_rng(i).permutation(
        words.split())) * 3)
  extract = ConfigDict(dict(corpus=str(docs), seq_len=12, max_tokens=12 * 3, text_field="text",
                            max_docs=0))
  return extract, ConfigDict(dict(enabled=True, rows=3, batch_size=2))


def test_exact_sae_recovers_everything_and_zero_decoder_nothing(tmp_path):
  lm = load_pretrained(FIX)
  d = lm.d_model
  eye = np.eye(d)
  exact = _write_sae(str(tmp_path / "exact"), np.concatenate([eye, -eye], 1),
                     np.concatenate([eye, -eye], 0))
  zero = _write_sae(str(tmp_path / "zero"), np.concatenate([eye, -eye], 1), np.zeros((2 * d, d)))
  extract, block = _blocks(tmp_path)
  res = spliced.run(lm, block, extract, {0: exact, 1: zero}, str(tmp_path / "out"), log=False)
  assert res["held_out"] and res["rows"] == 3
  r0, r1 = res["layers"]["0"], res["layers"]["1"]
  assert r0["mode"] == "causal"
  assert r0["ce_sae"] == pytest.approx(r0["ce_clean"], rel=1e-5)
  assert r0["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
  assert abs(r0["kl_sae"]) < 1e-5
  assert r1["ce_sae"] == pytest.approx(r1["ce_zero"], rel=1e-5)
  assert r1["ce_recovered"] == pytest.approx(0.0, abs=1e-4)
  assert r1["kl_sae"] == pytest.approx(r1["kl_zero"], rel=1e-5)
  again = spliced.run(lm, block, extract, {0: exact, 1: zero}, str(tmp_path / "out"), log=False)
  assert again == res                                   # the stage's final file is reused


def test_missing_sae_and_bad_rows_are_one_line(tmp_path):
  lm = load_pretrained(FIX, tokenizer=False)
  extract, block = _blocks(tmp_path)
  with pytest.raises(ConfigError, match="does not exist"):
    spliced.run(lm, block, extract, {0: str(tmp_path / "nope")}, str(tmp_path / "o"))
  block.rows = 0
  with pytest.raises(ConfigError, match="spliced.rows"):
    spliced.run(lm, block, extract, {}, str(tmp_path / "o"))
  assert not os.path.exists(tmp_path / "o")
