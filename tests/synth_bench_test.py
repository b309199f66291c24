"""SynthSAEBench metrics (jaxcode.analysis.synth_metrics) on hand-built cases and against a
brute-force matching, and the benchmark (jaxcode.experiments.synth_bench) end to end at a
cut-down :tiny: results, a rerun that does nothing, bad input refused before compute."""

import itertools
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import synth_bench as synth_config
from jaxcode import parallel
from jaxcode.analysis import synth_metrics as sm
from jaxcode.errors import ConfigError
from jaxcode.experiments import synth_bench


def _unit(rng, n, d):
  w = rng.standard_normal((n, d))
  return w / np.linalg.norm(w, axis=1, keepdims=True)


def test_permuted_truth_scores_one():
  """A dictionary equal to the truth permuted, rescaled and sign-flipped: MCC 1, uniqueness 1."""
  rng = np.random.default_rng(0)
  true = _unit(rng, 12, 5)
  perm = rng.permutation(12)
  learned = true[perm] * rng.uniform(0.5, 2, (12, 1)) * rng.choice([-1, 1], (12, 1))
  cos = sm.abs_cosines(learned, true)
  assert sm.mcc(cos) == pytest.approx(1.0, abs=1e-9)
  assert sm.uniqueness(cos) == 1.0


def test_mcc_matches_brute_force_matching():
  """Random rectangular cases: the best one-to-one assignment found by enumerating every
  injective map of the 3 latents into the 5 features."""
  rng = np.random.default_rng(1)
  for _ in range(5):
    cos = sm.abs_cosines(_unit(rng, 3, 4), _unit(rng, 5, 4))
    best = max(np.mean([cos[i, j] for i, j in enumerate(p)])
               for p in itertools.permutations(range(5), 3))
    assert sm.mcc(cos) == pytest.approx(best, abs=1e-12)
  # Two latents on the same feature: uniqueness 1/2.
  true = np.eye(3)
  assert sm.uniqueness(sm.abs_cosines(np.array([[1, 0.1, 0], [1, 0, 0.1]]), true)) == 0.5


def test_detection_and_explained_variance_by_hand():
  """Latent 0 = feature 1's direction, latent 1 = feature 2's, latent 2 never fires.  Over 4
  samples latent 0 fires on {0, 1}, feature 1 on {0, 2}: tp 1, fp 1, fn 1 -> P = R = F1 = 1/2,
  accuracy 2/4; latent 1 fires exactly with feature 2 -> 1, 1, 1, 1; latent 2 dead -> 0, 0, 0
  and accuracy (4 - 0 - 1) / 4 (feature 0, its match, fires once).  F1 mean (1/2 + 1 + 0) / 3.
  Explained variance of h_hat = h + e: 1 - sum e^2 / sum (h - mean h)^2, by hand."""
  true = np.eye(3)
  w_dec = np.array([[0, 2.0, 0], [0, 0, 1.0], [1.0, 0.2, 0]])
  a = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]], np.float32)
  f = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], np.float32)
  h = np.array([[1, 2], [3, 4], [5, 7], [0, 1]], np.float32)
  e = np.array([[0.5, 0], [0, -0.5], [1, 0], [0, 0]], np.float32)
  enc = lambda x: jnp.asarray(f)          # one batch: the codes and reconstruction by hand
  dec = lambda c: jnp.asarray(h + e)
  out = sm.evaluate(enc, dec, w_dec, true, [(h, a)])
  assert out["precision"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert out["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert out["f1"] == pytest.approx((0.5 + 1 + 0) / 3)
  assert out["accuracy"] == pytest.approx((2 / 4 + 1 + 3 / 4) / 3)
  assert out["dead_latents"] == 1
  assert out["true_l0"] == pytest.approx(4 / 4) and out["sae_l0"] == pytest.approx(3 / 4)
  hc = h - h.mean(0)
  assert out["explained_variance"] == pytest.approx(1 - np.sum(e ** 2) / np.sum(hc ** 2),
                                                    rel=1e-5)


def _tiny(**over):
  c = synth_config.get_config("tiny")
  c.unlock()
  c.steps = 20
  c.architectures = ("topk",)
  c.metrics.samples = 2048
  c.norm_sample_tokens = c.eval.tokens = c.eval.batch_size = c.metrics.batch_size = 256
  for k, v in over.items():
    *path, leaf = k.split(".")
    target = c
    for p in path:
      target = target[p]
    target[leaf] = v
  c.lock()
  return c


def test_tiny_end_to_end_and_rerun(tmp_path):
  """The table: TopK's L0 is k exactly, metrics in [0, 1], the published row beside; a rerun
  returns the same results and trains nothing."""
  wd = str(tmp_path / "run")
  mesh = parallel.single_device_mesh()   # the sharded loop is tested elsewhere
  out = synth_bench.run(_tiny(), wd, mesh=mesh)
  (row,) = out["table"]
  assert row["architecture"] == "topk" and row["sae_l0"] == pytest.approx(3.0)
  for k in ("f1", "mcc", "uniqueness"):
    assert 0.0 <= row[k] <= 1.0
  assert row["published"] is None and out["published"]["rows"]["BatchTopK"]["f1"] == 0.7316
  assert out["scale"]["ratio_to_published"]["n_features"] == pytest.approx(256 / 16384)
  assert all(os.path.exists(p) for p in out["figures"])
  metrics_file = os.path.join(wd, "saes", "topk", "metrics.jsonl")
  before = os.stat(metrics_file).st_mtime_ns
  again = synth_bench.run(_tiny(), wd, mesh=mesh)
  assert os.stat(metrics_file).st_mtime_ns == before
  assert json.dumps(again, sort_keys=True) == json.dumps(
      json.load(open(os.path.join(wd, "results.json"))), sort_keys=True)
  assert again["table"] == out["table"]


@pytest.mark.parametrize("over, msg", [
    ({"l0": 100}, "l0=100: expected 0 < l0 <= width=64"),
    ({"architectures": ("topk", "gated")}, "architectures: 'gated' is not an SAE architecture"),
    ({"synth.d_hidden": 0}, "synth.d_hidden=0: expected an integer >= 1"),
    ({"width": 0}, "width=0: expected an integer >= 1"),
])
def test_bad_input_one_line_before_compute(tmp_path, over, msg):
  wd = str(tmp_path / "bad")
  with pytest.raises(ConfigError, match=msg) as e:
    synth_bench.run(_tiny(**over), wd)
  assert "\n" not in str(e.value)
  assert not os.path.exists(os.path.join(wd, "saes"))
