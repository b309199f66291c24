"""The feature-atlas experiment end to end on the tiny BERT / GPT-2 fixtures (tests/fixtures/lm,
whose word-level tokenizers know ~50 words, so the tests ship their own small concept files).

Independent checks: the table's TwoNN and participation ratio equal scikit-dimension's
(skdim.id.TwoNN, skdim.id.lPCA(ver='participation_ratio')) on representations recomputed here
one word per forward pass (no batching, no padding), which checks the batching, the
right-padding and the word-position gather; the SAE columns equal numpy's L0 of ReLU codes
and 1 - mean |cos| of the decoder rows for a hand-written SAELens export; the probe, abstraction and specificity values come
from jaxcode.analysis.four_properties (tested against sklearn in four_properties_test.py).
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import four_properties as cfg_lib
from jaxcode.experiments import four_properties as exp
from jaxcode.pipeline import four_properties as stage
from jaxcode.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "lm")
CATS = {"categories": {
    "function": ["the", "a", "an", "of", "to", "in", "and", "is"],
    "transformer": ["model", "layer", "token", "residual", "stream", "attention", "head",
                    "neuron"],
    "code": ["python", "code", "def", "return", "class", "import", "function", "value"],
    "unknown": ["zebra", "giraffe", "the"]}}
RELS = {"relations": {
    "r1": [["the", "a"], ["of", "to"], ["in", "and"], ["is", "was"]],
    "r2": [["model", "layer"], ["token", "residual"], ["stream", "attention"],
           ["zebra", "giraffe"]],
    "unknown": [["zebra", "lion"], ["tiger", "wolf"]]}}
OVERRIDES = dict(template="this is {word}", mle_k=5, batch=16)


def _files(tmp_path, cats=CATS, rels=RELS):
  c, r = tmp_path / "cats.json", tmp_path / "rels.json"
  c.write_text(json.dumps(cats))
  r.write_text(json.dumps(rels))
  return str(c), str(r)


def _config(tmp_path, model, **kw):
  c = cfg_lib.get_config()
  c.model = os.path.join(FIX, model)
  c.categories_file, c.relations_file = _files(tmp_path)
  c.template, c.mle_k, c.batch = OVERRIDES["template"], OVERRIDES["mle_k"], OVERRIDES["batch"]
  c.probe.dim, c.probe.folds = 4, 3
  c.spectrum.lo, c.spectrum.hi = 1, 10
  for k, v in kw.items():
    node, name = (c.spectrum, k[9:]) if k.startswith("spectrum_") else (c, k)
    setattr(node, name, v)
  return c


def _check_table(res, n_layers, n_points, sae_layers=()):
  assert set(res["table"]) == {"template", "isolated"}
  assert res["counts"]["category_words"] == n_points
  assert res["counts"]["categories"]["unknown"] == dict(total=3, kept=1, dropped=2)
  assert res["counts"]["relations"]["r2"]["kept"] == 3
  for rows in res["table"].values():
    assert [r["layer"] for r in rows] == list(range(n_layers + 1))
    assert rows[0]["hookpoint"] == "embed" and rows[-1]["hookpoint"].endswith("resid_post")
    for r in rows:
      for key in ("twonn", "mle", "participation_ratio", "slope", "slope_r2",
                  "slope_stringer", "abstraction", "precision", "specificity",
                  "systematicity"):
        assert key in res["definitions"] or key == "intercept"
        assert math.isfinite(r[key]), (key, r[key])
      assert 0 <= r["precision"] <= 1 and 0 <= r["systematicity"] <= 1
      assert r["slope"] < 0 and 0 <= r["slope_r2"] <= 1
      assert set(r["pass"]) == {"abstraction", "precision", "specificity", "systematicity"}
      assert r["pass"]["abstraction"] == (r["abstraction"] > 2.0)
      if r["layer"] in sae_layers:
        assert 0 <= r["l0_sparsity"] <= 1 and 0 <= r["sae_orthogonality"] <= 1
      else:
        assert r["l0_sparsity"] is None and r["sae_orthogonality"] is None
      assert len(r["eigenvalues"]) == n_points - 1


def test_launch_end_to_end_bert(tmp_path):
  cats, rels = _files(tmp_path)
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "launch.four_properties", "--config=configs/four_properties.py",
         f"--workdir={wd}", f"--config.model={os.path.join(FIX, 'bert')}",
         f"--config.categories_file={cats}", f"--config.relations_file={rels}",
         "--config.template=this is {word}", "--config.mle_k=5", "--config.probe.dim=4",
         "--config.probe.folds=3", "--config.spectrum.lo=1", "--config.spectrum.hi=10"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  res = json.loads((wd / "results.json").read_text())
  _check_table(res, n_layers=2, n_points=24)
  for f in ("eigenspectra", "slope_vs_layer", "properties_vs_layer"):
    assert (wd / "figures" / f"{f}.png").stat().st_size > 1000


def test_gpt2_table_matches_skdim_on_unbatched_representations(tmp_path):
  import skdim
  from jaxcode.models.lm import load_pretrained
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  sae_dir = tmp_path / "sae"
  sae_dir.mkdir()
  sae_w = dict(W_enc=rng.normal(size=(32, 16)).astype(np.float32),
           b_enc=rng.normal(size=16).astype(np.float32),
           W_dec=rng.normal(size=(16, 32)).astype(np.float32), b_dec=np.zeros(32, np.float32))
  save_file(sae_w, str(sae_dir / "sae_weights.safetensors"))
  (sae_dir / "cfg.json").write_text(json.dumps(dict(architecture="standard", d_in=32, d_sae=16)))
  res = exp.run(_config(tmp_path, "gpt2", sae_paths=("", "", str(sae_dir))),
                str(tmp_path / "run"))
  _check_table(res, n_layers=2, n_points=24, sae_layers=(2,))
  u = sae_w["W_dec"] / np.linalg.norm(sae_w["W_dec"], axis=1, keepdims=True)
  cos = np.abs(u @ u.T)[~np.eye(16, dtype=bool)]
  np.testing.assert_allclose(res["table"]["template"][2]["sae_orthogonality"], 1 - cos.mean(),
                             rtol=1e-5)
  lm = load_pretrained(os.path.join(FIX, "gpt2"))
  words = [w for k, ws in CATS["categories"].items() if k != "unknown" for w in ws]
  for ctx in ("template",):   # the context where the word is not at a fixed position
    x = []
    for w in words:
      text, s, e = stage.contexts_for(w, "this is {word}")[ctx]
      ids, pos = stage.word_position(lm.tokenizer, text, s, e, True)
      x.append(np.asarray(lm.apply(np.asarray([ids]), None, ("blocks.1.resid_post",))
                          ["blocks.1.resid_post"])[0, pos])
    x = np.asarray(x, np.float64)
    row = res["table"][ctx][2]
    want_tn = skdim.id.TwoNN(discard_fraction=0.1).fit(x).dimension_
    want_pr = skdim.id.lPCA(ver="participation_ratio").fit(x).dimension_
    np.testing.assert_allclose(row["twonn"], want_tn, rtol=1e-3)
    np.testing.assert_allclose(row["participation_ratio"], want_pr, rtol=1e-3)
    pre = x @ sae_w["W_enc"] + sae_w["b_enc"]
    # The table's codes come from batched, padded float32 forwards (other shapes, possibly
    # other XLA kernels): a pre-activation within float32 rounding of 0 (1e-5 of the sum of
    # its terms' magnitudes) may land on either side, so each such one may change the count;
    # 1e-6 more for the float32 mean (one code weighs 1 / pre.size = 2.6e-3).
    near_zero = np.abs(pre) <= 1e-5 * (np.abs(x) @ np.abs(sae_w["W_enc"]) + np.abs(sae_w["b_enc"]))
    np.testing.assert_allclose(row["l0_sparsity"], np.mean(pre > 0), rtol=0,
                               atol=np.mean(near_zero) + 1e-6)


@pytest.mark.parametrize("change, match", [
    (dict(model="/no/such/model"), "does not exist"),
    (dict(spectrum_hi=40), "rank window"),
    (dict(template="no placeholder"), "template"),
    (dict(mle_k=30), "mle_k"),
])
def test_bad_input_one_line_before_compute(tmp_path, change, match):
  change = dict(change)
  c = _config(tmp_path, change.pop("model", "bert"), **change)
  with pytest.raises(ConfigError, match=match) as e:
    exp.run(c, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run" / "config.json").exists()


def test_empty_concept_list_after_filtering(tmp_path):
  c = _config(tmp_path, "bert")
  c.categories_file, c.relations_file = _files(
      tmp_path, {"categories": {"animals": ["zebra", "giraffe", "lion"]}},
      {"relations": {"x": [["zebra", "lion"], ["tiger", "wolf"]]}})
  with pytest.raises(ConfigError, match="concept list: none of 7 words") as e:
    exp.run(c, str(tmp_path / "run"))
  assert "\n" not in str(e.value)


def test_stage_takes_a_spec_or_a_model_and_is_reused(tmp_path):
  """The stage on its typed inputs: a ModelSpec (loaded by the stage), reused once complete
  (nothing is loaded or computed again), and one SAE (or None) per analysed layer."""
  from jaxcode.pipeline import model as model_lib
  c = _config(tmp_path, "bert")
  folder = str(tmp_path / "stage")
  res = stage.run(model_lib.resolve(c.model), None, c, folder, log=False)
  assert res["model"] == c.model and res["sae"] == "absent" and "figures" not in res
  _check_table(res, n_layers=2, n_points=24)
  assert stage.run(None, None, c, folder, log=False) == res
  lm = model_lib.load(model_lib.resolve(c.model))
  with pytest.raises(ConfigError, match="saes has 2 entries: expected one per analysed layer"):
    stage.run(lm, [None, None], c, str(tmp_path / "other"), log=False)
  with pytest.raises(ConfigError, match="sae_paths has 1 entries: expected one per analysed"):
    stage.saes_from_paths(("",), lm.n_layers + 1, lm.d_model)
  assert stage.saes_from_paths((), lm.n_layers + 1, lm.d_model) is None
