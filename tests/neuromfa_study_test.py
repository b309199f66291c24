"""Tests of launch.neuromfa_study: the family's parameter counts, bad input, the verdict
logic on planted data, the evaluator and data helpers on hand-built cases, a tiny run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from configs import neuromfa_study as cfg_lib
from jaxcode import parallel
from jaxcode.analysis import neuromfa_study as study
from jaxcode.errors import ConfigError
from jaxcode.experiments import neuromfa_study as exp
from jaxcode.pipeline import neuromfa_study as stages
from jaxcode.pipeline import neuromfa_study_data as sdata
from jaxcode.pipeline import neuromfa_study_lm as lm


@pytest.mark.parametrize("variant", ["all", "tiny"])
def test_family_configs_have_the_parameter_counts_they_state(variant):
  """Leaves of the initialised pytree (jax.eval_shape) against the stated counts and a
  closed form written here: 12 d^2-style blocks L(4d^2 + 2dm + 9d + m) + 2d, plus (V + T) d."""
  c = cfg_lib.get_config(variant)
  V = 101
  f = c.family
  for i in range(len(f.d_model)):
    module, _ = lm.make_module(stages.member_config(c, i), V)
    shapes = jax.eval_shape(lambda k: lm.init_params(module, k, 0.02), jax.random.PRNGKey(0))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    total = sum(int(np.prod(x.shape)) for _, x in flat)
    emb = sum(int(np.prod(x.shape)) for p, x in flat if parallel.path_str(p).split("/")[0]
              in ("wte", "wpe") or "wte" in parallel.path_str(p) or "wpe" in parallel.path_str(p))
    d, L, m = f.d_model[i], f.n_layers[i], f.d_mlp[i]
    assert total - emb == f.params_nonembed[i] == L * (4 * d * d + 2 * d * m + 9 * d + m) + 2 * d
    assert total == f.params_nonembed[i] + (V + c.data.seq_len) * d
  if variant == "all":
    assert f.params_nonembed[-1] / f.params_nonembed[0] >= 30     # the ~30x span the issue asks


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.family.update(dict(params_nonembed=(56_640, 25_472, 150_080, 793_344))),
     "strictly increasing"),
    (lambda c: setattr(c, "checkpoint_steps", (1, 64, 4096)), "step 4096 beyond steps=2000"),
    (lambda c: setattr(c, "claims", ("claim1", "claim9")), "unknown claim 'claim9'"),
    (lambda c: c.family.update(dict(params_nonembed=(25_472, 56_640, 150_000, 793_344))),
     "closed form gives 150080"),
    (lambda c: setattr(c.claim4.data, "name", "cifar"), "data.name='cifar'"),   # claim 4's block
    (lambda c: setattr(c.claim4, "train_seeds", (0, 0)), "expected distinct seeds"),
    (lambda c: setattr(c.claim4, "min_params", 10 ** 7), "no family point lies between"),
])
def test_bad_input_is_one_line_before_compute(tmp_path, edit, needle):
  c = cfg_lib.get_config("all")
  edit(c)
  wd = str(tmp_path / "wd")
  with pytest.raises(ConfigError, match=needle) as e:
    exp.validate(c, wd)
  assert "\n" not in str(e.value) and not os.path.exists(wd)


def test_claim1_verdicts_on_planted_shifts():
  """Hand-built per-seed shifts: the largest shifts left and widens, the smallest does not."""
  small = {"name": "s", "params": 10, "left": [0.01, -0.01, 0.0], "widen": [0.0, 0.02, -0.02]}
  big = {"name": "b", "params": 300, "left": [1.0, 1.1, 0.9], "widen": [0.5, 0.6, 0.4]}
  assert study.claim1([small, big])["verdict"] == study.SUPPORTED
  assert study.claim1([big, big])["verdict"] == study.NOT_SUPPORTED      # no size dependence
  neg = dict(big, left=[-1.0, -1.1, -0.9])
  assert study.claim1([small, neg])["verdict"] == study.NOT_SUPPORTED
  noisy = dict(big, left=[2.0, -1.0, 0.5])
  assert study.claim1([small, noisy])["verdict"] == study.INCONCLUSIVE
  one = dict(big, left=[1.0], widen=[0.5])
  assert study.claim1([small, one])["verdict"] == study.INCONCLUSIVE
  # shift_excess by hand: alpha0 1.0 -> 0.7 (null 1.0 -> 0.9): left 0.2; width 0.5 -> 0.8 (null 0.5 -> 0.6): 0.2
  left, widen = study.shift_excess([[1.0, 0.8, 0.7]], [[0.5, 0.6, 0.8]], [[1.0, 0.95, 0.9]],
                                   [[0.5, 0.55, 0.6]])
  np.testing.assert_allclose([left[0], widen[0]], [0.2, 0.2], atol=1e-12)


def test_claim2_spearman_and_verdicts_on_planted_series():
  rng = np.random.default_rng(0)
  acc = np.linspace(0.2, 0.8, 40)
  e = acc + 0.02 * rng.normal(size=40)
  out = study.spearman_boot(acc, e, 300, 0, y_null=rng.permutation(e))
  assert out["rho"] == pytest.approx(scipy.stats.spearmanr(acc, e).statistic)
  assert study.claim2(out, [])["verdict"] == study.SUPPORTED
  same = study.spearman_boot(acc, e, 300, 0, y_null=e + 1e-3 * rng.normal(size=40))
  assert study.claim2(same, [])["verdict"] == study.INCONCLUSIVE        # the null tracks too
  down = study.spearman_boot(acc, -e, 300, 0, y_null=e)
  assert study.claim2(down, [])["verdict"] == study.NOT_SUPPORTED
  mono = study.spearman_boot(np.arange(10.0), np.arange(10.0) ** 3, 100, 0)
  assert mono["rho"] == pytest.approx(1.0) and np.allclose(mono["ci"], 1.0)   # closed form


def test_claim3_log_fit_and_threshold_on_planted_sizes():
  """E = 0.1 + 0.05 ln N + noise: slope against scipy.stats.linregress of the means; the
  null excess is planted zero for the two small sizes and positive for the two large."""
  rng = np.random.default_rng(1)
  n = np.array([1e3, 4e3, 1.6e4, 6.4e4])
  vals = [0.1 + 0.05 * np.log(x) + 0.005 * rng.normal(size=5) for x in n]
  fit = study.logfit_boot(n, vals, 300, 0)
  ref = scipy.stats.linregress(np.log(n), [v.mean() for v in vals])
  assert fit["slope"] == pytest.approx(ref.slope, rel=1e-9)
  assert fit["ci"][0] < 0.05 < fit["ci"][1] and fit["ci"][0] > 0
  excess = [0.01 * rng.normal(size=5), 0.01 * rng.normal(size=5), 1 + 0.01 * rng.normal(size=5),
            2 + 0.01 * rng.normal(size=5)]
  th = study.threshold(n, excess)
  assert th["threshold"] and th["threshold_params"] == 16000
  assert study.claim3(fit, th)["verdict"] == study.SUPPORTED
  flat = study.logfit_boot(n, [0.3 + 0.05 * rng.normal(size=5) for _ in n], 300, 0)
  assert study.claim3(flat, th)["verdict"] == study.INCONCLUSIVE
  assert not study.threshold(n, [v + 5 for v in excess])["threshold"]    # all above: none


def test_claim5_verdicts():
  up, down, zero = [0.5, 0.6, 0.55], [-0.5, -0.6, -0.55], [0.1, -0.1, 0.0]
  assert study.claim5(up, down, -0.1)["verdict"] == study.SUPPORTED
  assert study.claim5(down, down, -0.1)["verdict"] == study.NOT_SUPPORTED
  assert study.claim5(up, zero, -0.1)["verdict"] == study.INCONCLUSIVE
  assert study.claim5(up, down, 0.05)["verdict"] == study.INCONCLUSIVE   # accuracy did not fall


class _Bigram:
  """A stand-in module: logits[b, t] = table[x[b, t]] (params {'table': [V, V]})."""
  n_layers = 1

  def apply(self, variables, x, mask, n_layers, head):
    return {"logits": variables["params"]["table"][x]}


def test_evaluator_on_a_bigram_table():
  """Uniform logits: loss ln V (closed form); the true bigram table: accuracy 1, cloze 1."""
  V, rng = 7, np.random.default_rng(0)
  row = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3], np.int32)     # next = (x + 1) mod 7
  items = np.array([[0, 5, 5, 1, 2, 3], [0, 9, 2, 6, 0, 4]], np.int32)
  data = {"eval": np.stack([row] * 3), "eval_mask": np.ones((3, 11), np.int32),
          "cloze_code": items, "cloze_code_rows": row[None], "cloze_prose": items,
          "cloze_prose_rows": row[None]}
  ev = study.evaluator(_Bigram(), data, chunk=2)
  uni = ev({"table": jnp.zeros((V, V))})
  assert uni["loss"] == pytest.approx(np.log(V), rel=1e-6)
  true = ev({"table": jnp.asarray(10.0 * np.eye(V)[(np.arange(V) + 1) % V]
                                  + 0.01 * rng.normal(size=(V, V)), jnp.float32)})
  assert true["acc"] == 1.0 and true["cloze_code"] == 1.0 and true["task_acc"] == 1.0


def test_cloze_items_degrade_and_shuffle_on_hand_built_rows():
  words = ["def", "foo", "(", "bar", ")", "baz", "qux", "=", "foo", "##s", "bar", "x", "baz",
           "qux", "bar"]
  ids = {w: i for i, w in reversed(list(enumerate(words)))}          # first id of each word
  row = np.array([ids[w] for w in words])
  items = sdata.code_cloze([row], lambda r: [words[int(i)] for i in r], 10, min_context=2)
  # by hand: 'bar' at 10, 'baz' at 12, 'qux' at 13 were seen before (14 has no next token;
  # 'foo' at 8 is cut by '##s'); distractors: the other whole identifiers seen, in order
  f, b, z, q = (ids[w] for w in ("foo", "bar", "baz", "qux"))
  assert items.tolist() == [[0, 10, b, f, z, q], [0, 12, z, f, b, q], [0, 13, q, f, b, z]]
  train, mask = np.arange(40).reshape(10, 4), np.ones((10, 4), np.int32)
  mask[0, 3] = 0
  tr, mk = sdata.degrade(train, mask, 0.2, 5, 0)
  assert len(tr) == 10 + 2 * 5 and len(np.unique(tr, axis=0)) == 10
  sh = sdata.shuffle_tokens(train, mask, 0)
  assert sh[0, 3] == 3 and all(sorted(a) == sorted(b) for a, b in zip(sh, train))


def test_tiny_claims_1_2_3_5_end_to_end_then_rerun_does_nothing(tmp_path):
  """Claims 1, 2, 3 and 5 through the launch path on a two-size toy family (claim 4 runs in
  neuromfa_vision_test); their numbers are recomputed here from the per-seed spectra in the
  results (scipy and numpy, not study code); a rerun is a no-op."""
  c = cfg_lib.get_config("tiny")
  c.claims = ("claim1", "claim2", "claim3", "claim5")
  c.family.update(dict(d_model=(8, 16), n_layers=(1, 1), n_heads=(1, 2), d_mlp=(32, 64),
                       params_nonembed=(888, 3_312), claim5_size=0))
  c.steps, c.checkpoint_steps, c.optim.warmup_steps = 2, (2,), 0
  c.data.update(dict(max_docs_per_source=3, heldout_fraction=0.34, eval_sequences=4,
                     cloze_items=4, seq_len=16))
  c.neuromfa.S, c.neuromfa.seeds, c.neuromfa.q_step = 8, (0, 1), 0.5
  c.claim5.finetune_steps, c.n_boot = 1, 20
  wd = str(tmp_path / "study")
  out = exp.run(c, wd, mesh=parallel.single_device_mesh())
  assert os.path.exists(os.path.join(wd, "report.html"))
  cl, fam = out["claims"], out["family"]
  assert set(cl) == {"claim1", "claim2", "claim3", "claim5"}
  assert all(v["verdict"] in (study.SUPPORTED, study.NOT_SUPPORTED, study.INCONCLUSIVE)
             for v in cl.values())
  e_mean = [np.asarray(pt["per_seed"]["emergence"], np.float64).mean(0) for pt in fam]
  acc = np.concatenate([pt["eval"]["task_acc"] for pt in fam])
  rho = scipy.stats.spearmanr(acc, np.concatenate(e_mean)).statistic
  pooled = cl["claim2"]["number"]["pooled"]
  assert pooled["n"] == 2 * 2 and (np.isnan(rho) or np.isclose(pooled["rho"], rho))
  last = [np.asarray(pt["per_seed"]["emergence"], np.float64)[:, -1].mean() for pt in fam]
  slope = np.polyfit(np.log([888, 3_312]), last, 1)[0]
  assert np.isclose(cl["claim3"]["number"]["fit"]["slope"], slope, rtol=1e-9)
  dup, ft = cl["claim5"]["duplicated"], cl["claim5"]["finetune"]
  assert ft["labels"][0] == "init" and len(ft["steps"]) == 1 + 1 + 1   # init, start, step 1
  dd = (np.asarray(fam[0]["per_seed"]["emergence"])[:, -1]
        - np.asarray(dup["per_seed"]["emergence"])[:, -1])
  assert np.isclose(cl["claim5"]["number"]["dedup_minus_dup_E"][0], dd.mean(), rtol=1e-9)
  pt = fam[0]
  assert pt["steps"] == [0, 2] and np.asarray(pt["per_seed"]["alpha0"]).shape == (2, 2)
  assert len(set(np.asarray(pt["per_seed"]["null_alpha0"])[:, 0])) == 2   # a null per sample
  e, a, w = (np.asarray(pt["per_seed"][k]) for k in ("emergence", "alpha0", "width"))
  np.testing.assert_allclose(e, w / w[:, :1] * np.log(a[:, :1] / a), rtol=1e-9)  # E(t) closed form
  stamp = {p: os.path.getmtime(os.path.join(wd, p)) for p in ("results.json", "report.html")}
  again = exp.run(c, wd, mesh=parallel.single_device_mesh())
  assert again["claims"] == json.load(open(os.path.join(wd, "results.json")))["claims"]
  assert stamp == {p: os.path.getmtime(os.path.join(wd, p)) for p in stamp}
