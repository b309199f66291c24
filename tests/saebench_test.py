"""SAEBench-compatible evals (jaxcode.analysis.saebench*) on planted cases with known answers.

References: absorption on a planted dictionary whose token-specific latents take over a known
share of one letter's tokens (the planted rate) and hand-worked token cases of the absorption
formulas; probing on planted separable directions (accuracy 1) and shuffled labels (chance);
core's explained variance against scikit-learn's r2_score (variance-weighted) and its other
names against their definitions written out in numpy here; the files against the JSON schema
with the jsonschema package.
"""

import copy

import jsonschema
import numpy as np
import pytest

from jaxcode.analysis import saebench, saebench_absorption as absorb, saebench_probing as probing
from jaxcode.errors import ConfigError


def planted_letters(rate=0.3, n_per=240, D=24, seed=0):
  """Three letters along e_0, e_1, e_2; a `rate` share of letter 0's tokens is absorbed: its
  main latent is off and a latent of its own (decoder (e_0 + w_j)/sqrt 2) carries it."""
  rng = np.random.default_rng(seed)
  letters = np.repeat(np.arange(3), n_per)
  N = len(letters)
  absorbed = (letters == 0) & (rng.random(N) < rate)
  n_abs = int(absorbed.sum())
  w = rng.normal(size=(n_abs, D))
  w[:, :3] = 0
  w /= np.linalg.norm(w, axis=1, keepdims=True)
  x = 0.3 * np.concatenate([np.zeros((N, 3)), rng.normal(size=(N, D - 3))], 1)
  x[np.arange(N), letters] += 3.0
  x[absorbed] += 3.0 * w
  w_dec = np.concatenate([np.eye(D)[:3], (np.eye(D)[0] + w) / np.sqrt(2)])
  codes = np.zeros((N, 3 + n_abs))
  codes[np.arange(N), letters] = 3.0
  codes[absorbed, 0] = 0.0
  codes[np.nonzero(absorbed)[0], 3 + np.arange(n_abs)] = 3.0 * np.sqrt(2)
  return x, codes, w_dec, letters, absorbed


def test_absorption_detected_at_the_planted_rate():
  # reference: the planted share of absorbed tokens among the held-out tokens of letter 'a'
  x, codes, w_dec, letters, absorbed = planted_letters()
  test = absorb.split_tokens(len(letters), 0.25, seed=1)
  s = absorb.AbsorptionSettings(min_letters=3, k_max=4)
  res = absorb.absorption(x, codes, w_dec, letters, test, s)
  assert not res["aborted"]
  by = {d["first_letter"]: d for d in res["details"]}
  planted = absorbed[test & (letters == 0)].mean()
  assert 0.2 < planted < 0.4
  assert by["a"]["num_split_features"] == 1
  assert by["a"]["mean_absorption_fraction"] == pytest.approx(planted, abs=0.02)
  assert by["a"]["full_absorption_rate"] == pytest.approx(planted, abs=0.02)
  for other in "bc":
    assert by[other]["mean_absorption_fraction"] == 0 and by[other]["full_absorption_rate"] == 0
  m = res["metrics"]["mean"]
  assert m["mean_absorption_fraction_score"] == pytest.approx(
      np.mean([by[k]["mean_absorption_fraction"] for k in "abc"]))


def test_absorption_aborts_below_min_letters():
  # reference: SAEBench's rule (fewer letters over the probe F1 than min_letters: no score)
  x, codes, w_dec, letters, _ = planted_letters(rate=0.0, n_per=60)
  res = absorb.absorption(x, codes, w_dec, letters, absorb.split_tokens(len(letters), 0.25, 1),
                          absorb.AbsorptionSettings(min_letters=20, k_max=2))
  assert res["aborted"] and res["metrics"]["mean"]["mean_absorption_fraction_score"] is None
  assert len(res["details"]) == 3


def test_token_scores_hand_cases():
  # hand-worked from the definitions (notes/evals.md section 2): c = (1, 0.5, 0.05)
  c = np.array([1.0, 0.5, 0.05])
  f = np.array([[1.0, 3.0, 0.0],    # P_M = 1, a = 3, absorber p = 1.5: A = 1.5, 1.5/2.5
                [0.0, 4.0, 0.0],    # P_M = 0, p = 2 >= 0.4 a: fraction 1, full
                [3.0, 0.0, 0.0],    # P_M = 3 >= a: 0
                [0.0, 0.0, 30.0]])  # latent 2 only (c < 0.1): S = 0, fraction 0; p 1.5 = 0.5 a: full
  a = np.array([3.0, 3.0, 3.0, 3.0])
  frac, full = absorb.token_scores(a, f, c, [0])
  np.testing.assert_allclose(frac, [0.6, 1.0, 0.0, 0.0])
  np.testing.assert_array_equal(full, [False, True, False, True])


def _planted_probe_data(seed=0, n=300, D=16):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.array(["x", "y", "z"]), n // 3)
  x = rng.normal(size=(n, D))
  x[np.arange(n), np.searchsorted(["x", "y", "z"], labels)] += 8.0
  groups = np.arange(n)
  return x, labels, groups


def test_probing_separable_is_one_and_shuffled_is_chance():
  # references: planted separable directions (accuracy 1 at k = 1 and full width); labels
  # shuffled independently of x (chance: 0.5 on balanced binary tasks)
  x, labels, groups = _planted_probe_data()
  test = probing.split_groups(groups, 0.3, seed=0)
  codes = np.maximum(x, 0)
  acc = probing.task_accuracies({"llm": x, "sae": codes}, labels, test, (1, 2), seed=0)
  for k in ("llm_test_accuracy", "llm_top_1_test_accuracy", "sae_test_accuracy",
            "sae_top_1_test_accuracy"):
    assert acc[k] == 1.0, k
  shuffled = np.random.default_rng(5).permutation(labels)
  acc = probing.task_accuracies({"llm": x}, shuffled, test, (1,), seed=0)
  assert abs(acc["llm_test_accuracy"] - 0.5) < 0.15
  metrics, details = probing.result_parts({"planted": acc}, (1,))
  assert metrics["llm"]["llm_top_5_test_accuracy"] is None
  assert details[0]["dataset_name"] == "planted"


def test_probing_one_class_is_refused():
  with pytest.raises(ConfigError, match="one class"):
    probing.check_labels("categories", ["animals"] * 10)


def test_core_names_match_their_definitions():
  # references: sklearn r2_score (variance weighted) for explained_variance; the other keys
  # written out in numpy from SAEBench's definitions (notes/evals.md 1.1)
  from sklearn.metrics import r2_score
  rng = np.random.default_rng(0)
  batches = []
  for b in range(3):
    x = rng.normal(size=(40, 6)) + 2.0
    batches.append((x, 0.8 * x + 0.1 * rng.normal(size=x.shape),
                    np.maximum(rng.normal(size=(40, 10)), 0), np.arange(40) // 10 + 4 * b))
  sums = saebench.CoreSums(6, 10)
  for x, xh, f, row in batches:
    sums.add(x, xh, f, row)
  m = sums.metrics()
  X, XH, F = (np.concatenate([b[i] for b in batches]) for i in range(3))
  assert m["explained_variance"] == pytest.approx(
      r2_score(X, XH, multioutput="variance_weighted"), rel=1e-9)
  legacy = np.concatenate([1 - ((x - xh) ** 2).sum(1) / ((x - x.mean(0)) ** 2).sum(1)
                           for x, xh, _, _ in batches])
  assert m["explained_variance_legacy"] == pytest.approx(legacy.mean(), rel=1e-9)
  cos = (X * XH).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(XH, axis=1)
  assert m["cossim"] == pytest.approx(cos.mean(), rel=1e-9)
  assert m["mse"] == pytest.approx((((X - XH) ** 2).sum(1) / 40).mean(), rel=1e-9)
  assert m["l0"] == pytest.approx((F != 0).sum(1).mean())
  assert m["l1"] == pytest.approx(F.sum(1).mean())
  rrb = np.mean([(xh ** 2).sum(1).mean() / (x * xh).sum(1).mean() for x, xh, _, _ in batches])
  assert m["relative_reconstruction_bias"] == pytest.approx(rrb, rel=1e-9)
  np.testing.assert_allclose(m["feature_density"], (F > 0).mean(0))
  rows = np.concatenate([b[3] for b in batches])
  fired_rows = np.array([len({r for r, on in zip(rows, F[:, j] > 0) if on}) for j in range(10)])
  np.testing.assert_allclose(m["consistent_activation_heuristic"],
                             (F > 0).sum(0) / fired_rows)


def _core_result():
  weights = {k: np.linspace(0.1, 0.9, 4) for k in saebench.LATENT_FIELDS[2:]}
  m = {k: 0.5 for k in ("explained_variance", "explained_variance_legacy", "mse", "cossim",
                        "mse_per_element", "l2_norm_in", "l2_norm_out", "l2_ratio",
                        "relative_reconstruction_bias", "l0", "l1")}
  m |= {"feature_density": np.array([0.0, 0.02, 0.2, 0.5]),
        "consistent_activation_heuristic": np.array([np.nan, 1.0, 2.0, 3.0])}
  spliced = {"mode": "causal", "kl_score": 0.9, "kl_zero": 5.0, "kl_sae": 0.5,
             "ce_recovered": 0.8, "ce_zero": 9.0, "ce_sae": 3.5, "ce_clean": 3.0}
  cats, rows, extra = saebench.core_result_parts(m, weights, spliced, 100)
  cfg = {"d_in": 8, "d_sae": 4, "architecture": "topk", "dtype": "float32",
         "apply_b_dec_to_input": False, "normalize_activations": "none", "model_name": "m",
         "hook_name": "blocks.0.resid_post", "hook_layer": 0, "context_size": 128,
         "prepend_bos": True}
  return saebench.clean(saebench.envelope("core", {"batch": 8}, cats, rows, extra, cfg, "s"))


def test_files_validate_against_the_schema():
  # reference: jsonschema on resources/saebench-schema.json; broken copies are refused
  good = _core_result()
  saebench.validate_result(good)
  assert good["eval_result_details"][0]["consistent_activation_heuristic"] == -1.0
  assert good["eval_result_metrics"]["misc_metrics"]["frac_alive"] == 0.75
  bad = copy.deepcopy(good)
  del bad["eval_result_metrics"]["sparsity"]["l0"]
  with pytest.raises(jsonschema.ValidationError):
    saebench.validate_result(bad)
  bad = copy.deepcopy(good)
  bad["eval_result_metrics"]["sparsity"]["l0"] = {"nested": 1}
  with pytest.raises(jsonschema.ValidationError):
    saebench.validate_result(bad)
  x, codes, w_dec, letters, _ = planted_letters(n_per=60)
  res = absorb.absorption(x, codes, w_dec, letters, absorb.split_tokens(len(letters), 0.25, 1),
                          absorb.AbsorptionSettings(min_letters=3, k_max=2))
  saebench.validate_result(saebench.clean(saebench.envelope(
      "absorption_first_letter", {}, res["metrics"], res["details"], None,
      good["sae_cfg_dict"], "s")))


def test_eval_names_are_checked():
  assert saebench.check_eval_names("core, sparse_probing") == ("core", "sparse_probing")
  with pytest.raises(ConfigError, match="'bogus'"):
    saebench.check_eval_names("core,bogus")
  with pytest.raises(ConfigError, match="not offered offline"):
    saebench.check_eval_names("ravel")
  with pytest.raises(ConfigError, match="not implemented"):
    saebench.check_eval_names("mdl")
