"""Feature interventions and patching on the tiny decoder fixtures with random transcoders.

References: the clean forward of the model (clamping a feature to its own value must give it
back, in both settings); the attribution graph's edges, computed by vector-Jacobian products
in attribution.py (a constrained ablation must move each logit by minus its direct edge);
the corrupt prompt's own forward (patching the whole residual stream entering block 0 must
reproduce it); and for attribution patching, the exact patches run one by one.
"""

import numpy as np
import pytest

from jaxcode.analysis import interventions as itv
from jaxcode.errors import ConfigError
from tests.attribution_test import IDS, build_case, lm_of, random_clt, random_plts

CASES = {"gemma3_clt": ("gemma3_text", lambda lm: random_clt(lm)),
         "llama_plt": ("llama", lambda lm: random_plts(lm))}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
  return build_case(*CASES[request.param], max_n_logits=4)


def demeaned(logits):
  z = np.asarray(logits, np.float64)[-1]
  return z - z.mean()


def test_clamping_to_own_value_changes_nothing(case):
  lm, tc, local, graph = case
  clean = np.asarray(local.logits)
  edits = [itv.FeatureEdit(int(j), int(p), int(i), float(a))
           for (j, p, i), a in zip(graph.features[:5], graph.activations[:5])]
  scale = np.abs(clean).max()
  for logits in (itv.constrained(local, edits)[0], itv.free(lm, tc, IDS, edits)):
    np.testing.assert_allclose(np.asarray(logits), clean, atol=2e-5 * scale)


def test_constrained_ablation_moves_logits_by_the_direct_edge(case):
  lm, tc, local, graph = case
  A, n_log = graph.adjacency, len(graph.logit_tokens)
  base = demeaned(local.logits)[graph.logit_tokens]
  checked = 0
  for n in np.argsort(-np.abs(A[-n_log:, :len(graph.features)]).max(0))[:4]:
    j, p, i = graph.features[n]
    logits = itv.constrained(local, [itv.FeatureEdit(int(j), int(p), int(i), 0.0)])[0]
    moved = demeaned(logits)[graph.logit_tokens] - base
    np.testing.assert_allclose(moved, -A[-n_log:, n], atol=1e-4 * np.abs(A[-n_log:]).max())
    checked += np.abs(A[-n_log:, n]).max() > 1e-3
  assert checked >= 2
  # free ablation differs (downstream features, attention and norms respond)
  j, p, i = graph.features[n]
  free = itv.free(lm, tc, IDS, [itv.FeatureEdit(int(j), int(p), int(i), 0.0)])
  assert np.abs(np.asarray(free) - np.asarray(logits)).max() > 1e-6


def test_steering_along_a_feature_raises_its_token(case):
  lm, tc, local, _ = case
  L, T, D = local.y_out.shape
  clean = demeaned(local.logits)
  # the last layer's features reach the logits through the final norm only: in the frozen
  # model find the feature and token with the largest logit effect per unit of steering
  effect = np.stack([demeaned(local.run(None, local.feature_vectors(L - 1, T - 1, f, 1.0))[2])
                     - clean for f in range(local.coders.W_enc[L - 1].shape[0])])
  f, v = np.unravel_index(np.argmax(effect), effect.shape)
  assert effect[f, v] > 0
  steer = [itv.FeatureEdit(L - 1, T - 1, int(f), 2.0, steer=True)]
  for logits in (itv.free(lm, tc, IDS, steer), itv.constrained(local, steer)[0]):
    delta = demeaned(logits) - clean
    assert delta[v] > 0 and delta[v] > np.median(delta)
    assert np.argmax(delta) == v


def test_activation_patching_reproduces_the_corrupt_run():
  lm = lm_of("llama")
  corrupt = IDS.copy()
  corrupt[4] = 50
  ref = lm.apply(corrupt[None], None, ["logits"])["logits"][0]
  got = itv.patch(lm, IDS, corrupt, "blocks.0.resid_pre")
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
  # patching only positions before the change does nothing
  same = itv.patch(lm, IDS, corrupt, "blocks.0.resid_pre", positions=[0, 1, 2, 3])
  clean = lm.apply(IDS[None], None, ["logits"])["logits"][0]
  np.testing.assert_allclose(np.asarray(same), np.asarray(clean), atol=1e-5, rtol=1e-5)


def test_attribution_patching_tracks_exact_patching():
  lm = lm_of("gemma3_text")
  corrupt = IDS.copy()
  corrupt[6] = 50
  clean_logits = np.asarray(lm.apply(IDS[None], None, ["logits"])["logits"][0])
  good, bad = np.argsort(-clean_logits[-1])[:2]
  res = itv.attribution_patching(lm, IDS, corrupt,
                                 ["blocks.0.attn_out", "blocks.1.mlp_out", "blocks.2.resid_pre"],
                                 itv.logit_diff_metric(int(good), int(bad)))
  assert res["approx"].shape == res["exact"].shape == (3, IDS.size)
  # positions before the changed token cannot be affected (causal), exactly and to first order
  assert np.abs(res["exact"][:, :6]).max() < 1e-5 and np.abs(res["approx"][:, :6]).max() < 1e-5
  assert res["correlation"] > 0.6, res        # 0.72 on this pair (first order, large patches)
  # patching the whole residual stream entering block 2 at every position changed is exact
  full = itv.patch(lm, IDS, corrupt, "blocks.2.resid_pre")
  metric = itv.logit_diff_metric(int(good), int(bad))
  assert abs(float(metric(full)) - res["metric_corrupt"]) < 1e-4


def test_bad_interventions_are_one_line_errors(case):
  lm, tc, local, _ = case
  with pytest.raises(ConfigError, match="intervention layer 9"):
    itv.constrained(local, [itv.FeatureEdit(9, 1, 0, 0.0)])
  with pytest.raises(ConfigError, match="intervention feature 999"):
    itv.free(lm, tc, IDS, [itv.FeatureEdit(0, 1, 999, 0.0)])
  with pytest.raises(ConfigError, match="same length"):
    itv.patch(lm, IDS, IDS[:-1], "blocks.0.resid_pre")
