"""Attribution graphs on the tiny decoder fixtures with random transcoders (circuit-tracer's
exactness checks, notes/circuits.md 7.2), float32.

References not taken from the code under test:
- the model's own clean forward (the fixtures match HF transformers, lm_parity_test): the
  local replacement must reproduce its logits;
- finite differences of the frozen forward: removing one source (a feature's decoder rows
  times its activation, an error vector, a token embedding) must move every target by
  minus its edge, and removing all of them leaves the constant c_t with
  target = sum_s A[t, s] + c_t; the edges themselves come from batched vector-Jacobian
  products, so this compares reverse mode with a forward evaluation;
- second differences: the frozen forward is affine in the injections (every norm scale and
  attention pattern frozen), while the real forward is not (so the check can fail);
- the unsharded computation for the sharded one (8 fake devices).
"""

import os

import numpy as np
import pytest

from jaxcode import parallel
from jaxcode.analysis import attribution as attr
from jaxcode.errors import ConfigError
from jaxcode.models.lm import load_pretrained
from jaxcode.models.sae_io import ExternalSAE
from jaxcode.models.transcoder_io import ExternalCLT

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
LMS = {}


def lm_of(arch):
  if arch not in LMS:
    LMS[arch] = load_pretrained(os.path.join(FIX, arch))
  return LMS[arch]


def random_clt(lm, F=16, skip=True, seed=0, activation="relu"):
  L, D = lm.n_layers, lm.d_model
  rng = np.random.default_rng(seed)
  u = lambda *s: rng.uniform(-1, 1, s).astype(np.float32)
  return ExternalCLT(W_enc=u(L, F, D) / np.sqrt(D), b_enc=u(L, F) * 0.1,
                     W_dec=[u(F, L - l, D) * 0.3 for l in range(L)], b_dec=u(L, D) * 0.1,
                     activation=activation, k=4 if activation == "topk" else None,
                     W_skip=u(L, D, D) * 0.1 if skip else None)


def random_plts(lm, F=16, arch="jumprelu", skip=False, seed=1):
  D = lm.d_model
  rng = np.random.default_rng(seed)
  u = lambda *s: rng.uniform(-1, 1, s).astype(np.float32)
  out = {}
  for l in range(lm.n_layers):
    out[l] = ExternalSAE(arch, u(D, F) / np.sqrt(D), u(F) * 0.1, u(F, D) * 0.3, u(D) * 0.1,
                         threshold=np.abs(u(F)) * 0.1 if arch == "jumprelu" else None,
                         k=4 if arch == "topk" else None,
                         kind="skip_transcoder" if skip else "transcoder",
                         W_skip=u(D, D) * 0.1 if skip else None)
  return out


CASES = {"gemma3_clt_skip": ("gemma3_text", lambda lm: random_clt(lm)),
         "llama_plt_jumprelu": ("llama", lambda lm: random_plts(lm)),
         "gpt2_plt_topk_skip": ("gpt2", lambda lm: random_plts(lm, arch="topk", skip=True))}
IDS = np.array([1, 17, 5, 30, 9, 22, 41, 8, 12, 3], np.int32)


def build_case(arch, make, max_n_logits):
  """(lm, transcoders, local replacement, graph) of the prompt IDS."""
  lm = lm_of(arch)
  tc = make(lm)
  local = attr.local_replacement(lm, tc, IDS)
  graph = attr.attribute(lm, tc, ids=IDS, batch_size=32, max_n_logits=max_n_logits)
  return lm, tc, local, graph


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
  return build_case(*CASES[request.param], max_n_logits=3)


def target_values(local, graph, dirs, out):
  """Every row target of the graph in the frozen run `out` = (x_in, final, logits)."""
  x_in, final = np.asarray(out[0]), np.asarray(out[1])
  c = local.coders
  vals = np.zeros(graph.adjacency.shape[0])
  for n, (j, p, i) in enumerate(graph.features):
    vals[n] = x_in[j, p] @ c.W_enc[j][i] + c.b_enc[j][i]
  vals[-len(graph.logit_tokens):] = np.asarray(dirs) @ final[-1]
  return vals


def removal(local, graph, kind, index):
  """(u_emb, u_out) removing one source node of the graph."""
  L, T, D = local.y_out.shape
  u_emb, u_out = np.zeros((T, D), np.float32), np.zeros((L, T, D), np.float32)
  if kind == "feature":
    j, p, i = graph.features[index]
    u_out -= local.feature_vectors(j, p, i, graph.activations[index])
  elif kind == "error":
    m, p = divmod(index, T)
    u_out[m, p] -= np.asarray(local.error)[m, p]
  else:
    u_emb[index] -= np.asarray(local.embed)[index]
  return u_emb, u_out


def test_local_replacement_reproduces_the_model(case):
  lm, _, local, _ = case
  x_in, final, logits = local.run()
  ref = lm.apply(IDS[None], None, ["logits", "final"])
  scale = float(np.abs(ref["logits"]).max())
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref["logits"][0]), atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(final), np.asarray(ref["final"][0]), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(x_in), np.asarray(local.x_in), atol=1e-5, rtol=1e-5)
  # the error nodes close the gap: reconstruction + error is the true MLP output
  np.testing.assert_allclose(np.asarray(local.recon + local.error), np.asarray(local.y_out),
                             atol=1e-5, rtol=1e-5)


def test_frozen_forward_is_affine_and_the_real_one_is_not(case):
  lm, _, local, _ = case
  L, T, D = local.y_out.shape
  rng = np.random.default_rng(3)
  ue, uo = rng.normal(size=(T, D)).astype(np.float32), rng.normal(size=(L, T, D)).astype(np.float32)
  g = [np.asarray(local.run(s * ue, s * uo)[1]) for s in (0.0, 1.0, 2.0)]
  second = np.abs(g[2] - 2 * g[1] + g[0]).max()
  assert second < 1e-4 * np.abs(g[2] - g[0]).max()
  # the same injections in the real model (nothing frozen) are far from affine
  def real(s):
    edits = {"embed": lambda x: x + s * ue[None]}
    edits.update({n: (lambda j: lambda y: y + s * uo[j][None])(j) for j, n in enumerate(local.outs)})
    rec = lm.module.apply({"params": lm.params}, IDS[None], np.ones((1, IDS.size), np.int32),
                          lm.n_layers, True, edits=edits)
    return np.asarray(rec["final"][0])
  r = [real(s) for s in (0.0, 1.0, 2.0)]
  assert np.abs(r[2] - 2 * r[1] + r[0]).max() > 100 * second + 1e-3


def test_edges_are_exact_finite_differences(case):
  lm, _, local, graph = case
  A = graph.adjacency
  n_f, L, T = len(graph.features), len(graph.layers), len(IDS)
  assert n_f > 10 and graph.metadata["n_selected_features"] == n_f
  dirs = attr.logit_directions(lm, graph.logit_tokens)
  base = target_values(local, graph, dirs, local.run())
  rows = np.r_[np.arange(n_f), np.arange(A.shape[0] - len(graph.logit_tokens), A.shape[0])]
  rng = np.random.default_rng(0)
  picks = [("feature", i, i) for i in rng.choice(n_f, 6, replace=False)]
  err_nodes = [m * T + p for m in range(L) for p in range(1, T)]
  picks += [("error", e, n_f + e) for e in rng.choice(err_nodes, 3, replace=False)]
  picks += [("token", t, n_f + L * T + t) for t in (0, 4, T - 1)]
  for kind, index, col in picks:
    moved = target_values(local, graph, dirs, local.run(*removal(local, graph, kind, index)))
    scale = np.abs(A[rows]).max()
    np.testing.assert_allclose(moved[rows] - base[rows], -A[rows, col], atol=2e-5 * scale + 1e-6,
                               err_msg=f"{kind} {index}")
  # all node sources removed at once: what remains is the constant term c_t
  u_emb, u_out = np.zeros_like(np.asarray(local.embed)), np.zeros_like(np.asarray(local.y_out))
  for kind, count in (("feature", n_f), ("error", L * T), ("token", T)):
    for index in range(count):
      e, o = removal(local, graph, kind, index)
      if kind == "error" and index % T == 0:
        continue          # position 0 errors are not nodes (zeroed)
      u_emb, u_out = u_emb + e, u_out + o
  const = target_values(local, graph, dirs, local.run(u_emb, u_out))
  np.testing.assert_allclose(base[rows] - const[rows], A[rows].sum(1),
                             atol=5e-5 * np.abs(A[rows]).sum(1).max() + 1e-5)


def test_only_features_and_logits_have_inputs_and_no_edge_runs_backwards(case):
  _, _, _, graph = case
  A, n_f, L, T = graph.adjacency, len(graph.features), len(graph.layers), len(IDS)
  assert not A[n_f:n_f + L * T + T].any()
  layer, pos = graph.features[:, 0], graph.features[:, 1]
  later = (layer[None, :] >= layer[:, None]) | (pos[None, :] > pos[:, None])
  assert not A[:n_f, :n_f][later].any()
  assert not graph.features[:, 1].min() == 0          # position 0 is zeroed


def test_sharded_rows_match_and_cap_selects_a_subset(case):
  lm, tc, _, graph = case
  mesh = parallel.make_mesh(data=8, model=1)
  sharded = attr.attribute(lm, tc, ids=IDS, batch_size=8, max_n_logits=3, mesh=mesh)
  np.testing.assert_allclose(sharded.adjacency, graph.adjacency, atol=1e-5, rtol=1e-4)
  capped = attr.attribute(lm, tc, ids=IDS, batch_size=8, max_n_logits=3, max_feature_nodes=8)
  assert len(capped.features) == 8
  full_index = {tuple(f): n for n, f in enumerate(graph.features)}
  idx = np.array([full_index[tuple(f)] for f in capped.features])
  n_full, n_cap = len(graph.features), 8
  # rows of the selected features over the selected features, errors and tokens agree
  np.testing.assert_allclose(capped.adjacency[:n_cap, :n_cap], graph.adjacency[idx][:, idx],
                             atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(capped.adjacency[:n_cap, n_cap:], graph.adjacency[idx, n_full:],
                             atol=1e-5, rtol=1e-4)


def test_bad_input_is_one_line_before_compute():
  lm = lm_of("gpt2")
  tc = random_plts(lm)
  calls = []
  orig = attr.local_replacement
  attr.local_replacement = lambda *a, **k: calls.append(1) or orig(*a, **k)
  try:
    for kwargs, match in [
        (dict(prompt="   "), "prompt='   ': expected non-empty text"),
        (dict(prompt="a b " * 40), r"prompt of \d+ tokens: the model's context is 16 tokens"),
        (dict(ids=IDS, target_tokens=["not-a-token-at-all"]), "is not in the vocabulary"),
        (dict(ids=IDS, target_tokens=[10 ** 6]), r"target token id 1000000: expected an id in"),
        (dict(ids=np.array([3, 70])), r"prompt ids in \[3, 70\]: expected token ids in"),
        (dict(ids=IDS, batch_size=0), "batch_size=0: expected a positive integer"),
        (dict(ids=IDS, desired_logit_prob=1.5), r"desired_logit_prob=1.5: expected a number")]:
      with pytest.raises(ConfigError, match=match):
        attr.attribute(lm, tc, **kwargs)
    wrong = random_plts(lm_of("llama"))          # 2 layers of width 32 but...
    wrong = {l: t for l, t in wrong.items() if l == 0}
    with pytest.raises(ConfigError, match=r"transcoders cover layers \[0\]: expected every layer"):
      attr.attribute(lm, wrong, ids=IDS)
    narrow = {l: ExternalSAE("standard", t.W_enc[:16], t.b_enc, t.W_dec[:, :16], t.b_dec[:16],
                             kind="transcoder") for l, t in tc.items()}
    with pytest.raises(ConfigError, match=r"W_enc\[0\] of shape \(16, 16\): expected \(16, 32\)"):
      attr.attribute(lm, narrow, ids=IDS)
  finally:
    attr.local_replacement = orig
  assert not calls
