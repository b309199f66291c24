"""The attribution experiment end to end on the Gemma 3 fixture (configs/attribution.py:tiny,
shortened): transcoders trained, the graph written as schema-valid graph.json and a page that
headless Chromium draws node for node; a rerun is a no-op; a second run reads the first run's
transcoders; bad input is one line before any compute, leaving nothing behind."""

import json
import os

import numpy as np
import pytest

from configs import attribution as attribution_config
from jaxcode.analysis import circuit_graph
from jaxcode.errors import ConfigError
from jaxcode.experiments import attribution as experiment
from jaxcode.models import transcoder_io
from tests.graph_html_test import dump_dom, elements
from tests.launch_util import set_fields


def tiny(**over):
  c = attribution_config.get_config("tiny")
  with c.unlocked():
    set_fields(c, **{"train.steps": 20, "train.checkpoint.every": 20, "train.log_every": 10,
                     "train.eval.tokens": 256, "train.norm_sample_tokens": 256,
                     "train.extract.max_tokens": 32 * 16, "progress": False, **over})
  return c


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("attr") / "run")
  return wd, experiment.run(tiny(), wd)


def test_tiny_run_writes_a_valid_graph_and_page(first, tmp_path):
  wd, res = first
  for name in ("graph.json", "graph-metadata.json", "graph.html", "results.json"):
    assert os.path.exists(os.path.join(wd, name)), name
  doc = json.load(open(os.path.join(wd, "graph.json")))
  circuit_graph.validate_json(doc)
  assert doc["metadata"]["prompt"] == res["prompt"]
  for key in ("replacement_score", "completeness_score"):
    assert 0 <= res["scores"][key] <= 1 and 0 <= res["scores_pruned"][key] <= 1
  assert res["top_paths"] and res["top_paths"][0]["nodes"][-1].startswith("logit")
  assert res["attribution"]["n_selected_features"] == res["attribution"]["n_active_features"] > 0
  dom = dump_dom(os.path.join(wd, "graph.html"), tmp_path)
  assert len(elements(dom, "node")) == len(doc["nodes"]) == res["n_nodes_pruned"]


def test_rerun_is_a_no_op_and_a_second_run_reuses_the_transcoders(first, tmp_path, capsys):
  wd, res = first
  stamp = os.path.getmtime(os.path.join(wd, "graph.json"))
  again = experiment.run(tiny(), wd)
  assert again["n_nodes"] == res["n_nodes"]
  assert os.path.getmtime(os.path.join(wd, "graph.json")) == stamp
  other = experiment.run(tiny(transcoders=wd, prompt="the dog sat", target_tokens=("the",)),
                         str(tmp_path / "second"))
  assert not os.path.exists(tmp_path / "second" / "transcoders")
  assert "the" in [l["token"] for l in other["logits"]]
  assert other["n_tokens"] < res["n_tokens"]


def _bad_clt(tmp_path):
  """A CLT of the right width for two layers (the fixture has three)."""
  rng = np.random.default_rng(0)
  clt = transcoder_io.ExternalCLT(
      W_enc=rng.normal(size=(2, 8, 32)).astype(np.float32), b_enc=np.zeros((2, 8), np.float32),
      W_dec=[rng.normal(size=(8, 2 - l, 32)).astype(np.float32) for l in range(2)],
      b_dec=np.zeros((2, 32), np.float32))
  return transcoder_io.export_circuit_tracer_clt(str(tmp_path / "clt2"), clt)


@pytest.mark.parametrize("over,match", [
    (dict(prompt=""), "prompt='': expected non-empty text"),
    (dict(prompt="the cat " * 40), r"prompt of \d+ tokens: the model's context is 64 tokens"),
    (dict(target_tokens=("zzzzqqq",)), "target token 'zzzzqqq' is not in the vocabulary"),
    (dict(node_threshold=1.5), r"node_threshold=1.5: expected a number in \(0, 1\]"),
    (dict(transcoders="CLT2"), r"transcoders cover layers \[0, 1\]: expected every layer 0..2"),
    (dict(transcoders="/nonexistent/tc"), "dictionary path '/nonexistent/tc' does not exist"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, over, match):
  if over.get("transcoders") == "CLT2":
    over = dict(transcoders=_bad_clt(tmp_path))
  wd = tmp_path / "wd"
  with pytest.raises(ConfigError, match=match):
    experiment.run(tiny(**over), str(wd))
  assert not wd.exists()


def test_a_transcoder_set_folder_loads_as_per_layer_coders(tmp_path):
  from jaxcode.pipeline import attribution as attr_stage
  from tests.attribution_test import lm_of, random_plts
  lm = lm_of("llama")
  ts = random_plts(lm, skip=True)
  for l, t in ts.items():
    ts[l] = t.__class__(**{**t.__dict__, "hook_in": f"blocks.{l}.resid_mid",
                           "hook_out": f"blocks.{l}.mlp_out"})
  path = transcoder_io.export_circuit_tracer_plts(str(tmp_path / "set"), [ts[0], ts[1]], (0, 1))
  coders = attr_stage.load_transcoders(path)
  assert coders.hook_in == "blocks.{layer}.resid_mid" and coders.n_slots == 1
  for l in (0, 1):
    np.testing.assert_allclose(coders.W_enc[l], ts[l].W_enc.T, rtol=1e-6)
    np.testing.assert_allclose(coders.W_dec[l][:, 0], ts[l].W_dec, rtol=1e-6)
    np.testing.assert_allclose(coders.W_skip[l], ts[l].W_skip, rtol=1e-6)
  assert coders.threshold is not None and coders.activation == "jumprelu"
