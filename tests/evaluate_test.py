"""launch.evaluate end to end (configs/evaluate.py:tiny, shortened) on the embedded MiniLM, the
absorption pipeline on the tiny causal fixture (tests/fixtures/lm/smollm), and bad input.

References: every written file against resources/saebench-schema.json (jsonschema); core's
token count against the valid tokens of the packed corpus counted here; core's L0 against the
TopK dictionary's k; the absorption prompt's read position against the word's own token id;
a rerun leaves the files untouched (bitwise).
"""

import json
import os

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from jaxcode.analysis import saebench
from jaxcode.errors import ConfigError
from jaxcode.experiments import evaluate as experiment
from tests.launch_util import set_fields

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "smollm")


def tiny(**over):
  c = evaluate_config.get_config("tiny")
  with c.unlocked():
    set_fields(c, **{"train.steps": 10, "train.checkpoint.every": 10, "train.log_every": 10,
                     "train.optim.warmup_steps": 2, "train.eval.tokens": 256,
                     "train.norm_sample_tokens": 512, "data.max_tokens": 128 * 4,
                     "probing.max_per_class": 6, "probing.tasks": "categories",
                     "probing.categories": "animals,colors,fruits", "progress": False,
                     **over})
  return c


@pytest.fixture(scope="module")
def first(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("evals") / "run")
  return wd, experiment.run(tiny(), wd)


def test_tiny_writes_schema_valid_files_and_the_page(first):
  from jaxcode.pipeline import cache as cache_lib
  from jaxcode.pipeline import model as model_lib
  wd, res = first
  assert res["evals"] == ["core", "sparse_probing"]      # MiniLM: no absorption under 'all'
  files = res["files"]["trained_sae"]
  for name in ("core", "sparse_probing"):
    with open(os.path.join(wd, files[name])) as f:
      saebench.validate_result(json.load(f))
  with open(os.path.join(wd, files["core"])) as f:
    core = json.load(f)
  c = tiny()
  lm = model_lib.load(model_lib.resolve(c.model))
  packed = cache_lib.load_packed(c.data, lm.tokenizer)
  valid = int((packed.attention_mask.astype(bool) & ~packed.special).sum())
  tokens = core["eval_result_metrics"]["token_stats"]["total_tokens_eval_reconstruction"]
  assert tokens == valid
  assert core["eval_result_metrics"]["sparsity"]["l0"] <= c.train.sae.k
  assert "model_performance_preservation" not in core["eval_result_metrics"]   # no LM head
  assert len(core["eval_result_details"]) == c.train.sae.d_sae
  page = open(os.path.join(wd, "evals.html")).read()
  assert "jaxcode/trained_sae" in page and "Pythia-70M L4 TopK" in page
  for name in saebench.NOT_OFFERED:
    assert f"<b>{name}</b>" in page


def test_rerun_is_a_no_op(first):
  wd, res = first
  path = os.path.join(wd, res["files"]["trained_sae"]["core"])
  before = open(path, "rb").read()
  again = experiment.run(tiny(), wd)
  assert again["files"] == res["files"] and open(path, "rb").read() == before


@pytest.mark.parametrize("over,match", [
    ({"evals": "core,bogus"}, "'bogus'"),
    ({"evals": "core,absorption"}, "needs a causal LM"),
    ({"evals": "scr"}, "not offered offline"),
    ({"probing.categories": "animals"}, "one class"),
    ({"probing.tasks": "source,nope"}, "'nope' is not a task"),
])
def test_bad_input_is_one_line_before_compute(tmp_path, over, match):
  wd = str(tmp_path / "w")
  with pytest.raises(ConfigError, match=match) as e:
    experiment.run(tiny(**over), wd)
  assert "\n" not in str(e.value) and not os.path.exists(wd)


def test_absorption_pipeline_on_a_causal_fixture(tmp_path):
  from jaxcode.data import corpus as corpus_lib
  from jaxcode.analysis import saebench_absorption as absorb
  from jaxcode.models import sae_io
  from jaxcode.pipeline import evals as stage
  from jaxcode.pipeline import model as model_lib
  lm = model_lib.load(model_lib.resolve(FIXTURE))
  words = absorb.letter_vocab(lm.tokenizer, 40)
  prefix = corpus_lib.special_affixes(lm.tokenizer)[0]
  ids, pos = absorb.prompt_ids(lm.tokenizer, words, 2, 0, prefix)
  assert all(seq[p] == tid for seq, p, (tid, _) in zip(ids, pos, words))
  rng = np.random.default_rng(0)
  D, M = lm.d_model, 24
  w = rng.normal(size=(D, M)).astype(np.float32)
  sae = sae_io.ExternalSAE("standard", w, np.zeros(M, np.float32), w.T.copy() / D,
                           np.zeros(D, np.float32))
  c = tiny(**{"absorption.max_words": 40, "absorption.n_icl": 2, "absorption.min_letters": 1,
              "absorption.k_max": 2, "absorption.min_probe_f1": 0.0})
  packed = corpus_lib.Packed(np.zeros((1, 8), np.int32), np.ones((1, 8), np.int32),
                             np.zeros((1, 8), np.int32), np.zeros((1, 8), bool), ["d"], ["x"])
  out = stage.run_evals(lm, sae, "blocks.1.resid_post", packed, ("absorption",),
                        str(tmp_path), c, "random", "fixture")
  with open(out["absorption"]) as f:
    res = json.load(f)
  saebench.validate_result(res)
  assert res["eval_result_unstructured"]["n_words"] == len(words)
  f1 = res["eval_result_unstructured"]["probe_f1"]
  assert f1 and set(f1) <= set(absorb.LETTERS)
  counted = {d["first_letter"] for d in res["eval_result_details"]}
  assert counted == {k for k, v in f1.items() if v > 0.0}       # min_probe_f1 = 0
  assert res["eval_result_unstructured"]["status"].startswith("aborted") == (not counted)


def test_own_hookpoint_override_own_name_or_one_line():
  """The hookpoint a dictionary is read at (pipeline.sae.own_hookpoint, shared with
  launch.dashboards): the override wins; else the dictionary's own blocks.<i>.<site> name;
  a name not of the form blocks.<i>.<site>, or no dictionary, is refused in one line."""
  import types
  from jaxcode.pipeline import sae as sae_stage
  ours = types.SimpleNamespace(hook_in="blocks.3.resid_post")
  theirs = types.SimpleNamespace(hook_in="blocks.6.hook_resid_post.x")
  assert sae_stage.own_hookpoint("blocks.1.resid_post", theirs) == "blocks.1.resid_post"
  assert sae_stage.own_hookpoint("", ours) == "blocks.3.resid_post"
  for sae in (theirs, None):
    with pytest.raises(ConfigError, match="names no hookpoint of ours") as e:
      sae_stage.own_hookpoint("", sae)
    assert "\n" not in str(e.value)
