"""launch.dashboards end to end on the embedded MiniLM (configs/dashboards.py:tiny, shortened):
an SAE trained, scanned, its pages written and drawn by headless Chromium; a rerun is a no-op;
an exported dictionary is read back by path; bad input is one line before compute.

References: the scan's own numbers are checked against numpy in feature_scan_test; here the
top context of every live latent is checked against the model itself (the dictionary's code
at the qualifying token, recomputed by an independent forward), and the page against the
records it was written from.
"""

import json
import os

import numpy as np
import pytest

from configs import dashboards as dashboards_config
from jaxcode.errors import ConfigError
from jaxcode.experiments import dashboards as experiment
from jaxcode.models import sae_formats, sae_io
from tests.graph_html_test import dump_dom, elements
from tests.launch_util import set_fields


def tiny(**over):
  c = dashboards_config.get_config("tiny")
  with c.unlocked():
    set_fields(c, **{"train.steps": 30, "train.checkpoint.every": 30, "train.log_every": 10,
                     "train.optim.warmup_steps": 5,
                     "train.eval.tokens": 256, "train.norm_sample_tokens": 512,
                     "data.max_tokens": 128 * 8, "scan.k_top": 5, "per_page": 100,
                     "progress": False, **over})
  return c


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("dash") / "run")
  return wd, experiment.run(tiny(), wd)


def test_tiny_run_writes_pages_the_browser_draws(first, tmp_path):
  wd, res = first
  for name in ("index.html", "latent.html", "latents/page_0.html", "results.json",
               "neuronpedia/skipped_indexes.json"):
    assert os.path.exists(os.path.join(wd, name)), name
  assert res["n_latents"] == 256 and res["n_tokens"] > 500
  dom = dump_dom(os.path.join(wd, "index.html"), tmp_path)
  assert len(elements(dom, "latent-row")) == 256
  batches = [f for f in os.listdir(os.path.join(wd, "neuronpedia")) if f.startswith("batch-")]
  feats = [f for b in batches for f in json.load(open(os.path.join(wd, "neuronpedia", b)))[
      "features"]]
  assert len(feats) == 256 - len(json.load(open(os.path.join(
      wd, "neuronpedia", "skipped_indexes.json")))["skipped_indexes"])


def test_top_contexts_match_an_independent_forward(first):
  from jaxcode.pipeline import cache as cache_lib
  from jaxcode.pipeline import model as model_lib
  wd, _ = first
  c = tiny()
  lm = model_lib.load(model_lib.resolve(c.model))
  packed = cache_lib.load_packed(c.data, lm.tokenizer)
  sae = sae_formats.load_dictionary(os.path.join(wd, "sae", "export", "sae"))
  state = np.load(os.path.join(wd, "scan", "scan_state.npz"))
  top_v, top_r, top_p = state["r/top_values"], state["r/top_rows"], state["r/top_pos"]
  rows = sorted({int(r) for r in top_r[:, 0] if r >= 0})[:3]
  x = lm.apply(packed.input_ids[rows], packed.attention_mask[rows], [c.hookpoint])[c.hookpoint]
  codes = np.asarray(sae_io.encode(sae, np.asarray(x)))
  checked = 0
  for f in range(sae.d_sae):
    if top_r[f, 0] in rows:
      got = codes[rows.index(int(top_r[f, 0])), top_p[f, 0], f]
      np.testing.assert_allclose(got, top_v[f, 0], rtol=1e-4, atol=1e-5)
      assert not packed.special[top_r[f, 0], top_p[f, 0]]
      checked += 1
  assert checked >= 3


def test_rerun_is_a_no_op_and_an_exported_dictionary_loads(first, tmp_path):
  wd, res = first
  stamp = os.path.getmtime(os.path.join(wd, "index.html"))
  assert experiment.run(tiny(), wd)["n_latents"] == res["n_latents"]
  assert os.path.getmtime(os.path.join(wd, "index.html")) == stamp
  other = experiment.run(tiny(sae=os.path.join(wd, "sae", "export", "sae"), hookpoint="",
                              **{"scan.max_latents": 10}), str(tmp_path / "second"))
  assert other["hookpoint"] == "blocks.3.resid_post"       # the export's own hook name
  assert not os.path.exists(tmp_path / "second" / "sae")


@pytest.mark.parametrize("over,match", [
    ({"scan.k_top": 0}, r"scan.k_top=0: expected a positive integer"),
    ({"scan.window_before": 200}, r"scan window 200 \+ 1 \+ 4 tokens is longer than the "
                                  r"sequence length 128"),
    ({"sae": "NARROW"}, r"dictionary d_in=16 does not match hookpoint blocks.3.resid_post of "
                        r"width 384"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, over, match):
  if over.get("sae") == "NARROW":
    rng = np.random.default_rng(0)
    narrow = sae_io.ExternalSAE("standard", rng.normal(size=(16, 8)).astype(np.float32),
                                np.zeros(8, np.float32), rng.normal(size=(8, 16)).astype(
                                    np.float32), np.zeros(16, np.float32))
    over = {"sae": sae_io.export_saelens_external(str(tmp_path / "narrow"), narrow)}
  if over.get("sae"):
    over["scan.k_top"] = 5
  wd = tmp_path / "wd"
  with pytest.raises(ConfigError, match=match):
    experiment.run(tiny(**over), str(wd))
  assert not wd.exists()


def test_cache_batches_give_the_cached_tokens_at_their_packed_rows(tmp_path):
  """The scan's cache stream: every token's (row, pos) points at its own id in the packed rows
  and its activation is the model's there (float32 cache, so to float tolerance)."""
  from jaxcode.data import activations
  from jaxcode.pipeline import cache as cache_lib
  from jaxcode.pipeline import dashboards as dash
  from jaxcode.pipeline import model as model_lib
  c = tiny()
  lm = model_lib.load(model_lib.resolve(c.model))
  with c.data.unlocked():
    c.data.max_tokens = 128 * 3
  packed = cache_lib.load_packed(c.data, lm.tokenizer)
  activations.extract(lm, packed, [c.hookpoint], str(tmp_path / "cache"), batch_size=1,
                      rows_per_chunk=2, dtype="float32", progress=False)
  cache = activations.ActivationCache.open(str(tmp_path / "cache"))
  batches = dash.CacheBatches(cache, c.hookpoint, 100)
  ref = np.asarray(lm.apply(packed.input_ids, packed.attention_mask, [c.hookpoint])[c.hookpoint])
  seen = 0
  for i in range(len(batches)):
    b = batches[i]
    r, p = b["row"][b["valid"]], b["pos"][b["valid"]]
    ids = cache.token_info(np.arange(i * 100, i * 100 + len(r)))["token_ids"]
    np.testing.assert_array_equal(packed.input_ids[r, p], ids)
    np.testing.assert_allclose(b["x"][b["valid"]], ref[r, p], atol=1e-4, rtol=1e-4)
    assert not packed.special[r, p].any()
    seen += len(r)
  assert seen == cache.n_tokens and len(batches) == -(-cache.n_tokens // 100)
