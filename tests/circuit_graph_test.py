"""circuit_graph: influence, pruning and graph scores on hand-built DAGs with values derived by
hand below, B = (I - A_hat)^-1 - I against numpy.linalg.inv, a literal full-matrix reading of
circuit-tracer's pruning on random DAGs, and the Neuronpedia JSON (ids, Cantor values,
links, collisions, schema, files)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxcode.analysis import circuit_graph as cg
from jaxcode.errors import ConfigError


def make_graph(adjacency, features, layers, n_pos, probs, activations=None, tokens=None,
               logit_tokens=None, metadata=None, dtype=np.float32):
  n_f = len(features)
  return cg.Graph(
      adjacency=np.asarray(adjacency, dtype),
      features=np.asarray(features, np.int64).reshape(n_f, 3),
      activations=np.asarray(activations if activations is not None else np.arange(1, n_f + 1),
                             np.float32),
      layers=tuple(layers), input_tokens=np.asarray(tokens or list(range(n_pos)), np.int64),
      token_strings=[f"t{p}" for p in range(n_pos)],
      logit_tokens=np.asarray(logit_tokens or list(range(100, 100 + len(probs))), np.int64),
      logit_probs=np.asarray(probs, np.float32), logit_strings=[f" w{k}" for k in range(len(probs))],
      prompt="t0 t1", scan="toy-scan", metadata=metadata if metadata is not None else {})


# ---------------------------------------------------------------- hand graphs

def chain(p=0.5):
  """L=1, T=1: f(0) <- t(2) weight -2, logit g(3) <- f weight 3; the error e(1) has no edges.

  A_hat: row f = [0,0,1,0], row g = [1,0,0,0]. w = [0,0,0,p].
  w A_hat = p row g = (f: p); (f: p) A_hat = p row f = (t: p); then p row t = 0.
  influence = [f p, e 0, t p, g 0]."""
  a = np.zeros((4, 4))
  a[0, 2], a[3, 0] = -2.0, 3.0
  return make_graph(a, [[0, 0, 5]], (0,), 1, [p])


F0, F1, F2, E00, E01, E10, E11, T0, T1, G1, G2 = range(11)


def diamond(probs=(1.0,), layers=(3, 5), f0_index=7):
  """L=2, T=2 (position 0 inert), features f0 (layer j=0), f1, f2 (j=1), all at position 1;
  errors e(j,pos) = 3 + 2j + pos; tokens t0=7, t1=8; logits 9 (and 10).

  edges (row <- column: weight): f0 <- t1: 2; f1 <- f0: 3, f1 <- e(0,1): -1;
  f2 <- f0: -1, f2 <- t1: 1; g1 <- f1: 4, g1 <- f2: 2, g1 <- e(1,1): 2.
  A_hat rows: f0 = (t1 1); f1 = (f0 3/4, e01 1/4); f2 = (f0 1/2, t1 1/2);
              g1 = (f1 1/2, f2 1/4, e11 1/4).
  With p(g1) = 1:
    v1 = row g1                          = f1 .5, f2 .25, e11 .25
    v2 = .5 row f1 + .25 row f2          = f0 .375 + .125 = .5, e01 .125, t1 .125
    v3 = .5 row f0                       = t1 .5;   v4 = 0
  influence: f0 .5, f1 .5, f2 .25, e01 .125, e11 .25, t1 .625, all others 0 (sum 2.25)."""
  n = 9 + len(probs)
  a = np.zeros((n, n))
  a[F0, T1] = 2
  a[F1, F0], a[F1, E01] = 3, -1
  a[F2, F0], a[F2, T1] = -1, 1
  a[G1, F1], a[G1, F2], a[G1, E11] = 4, 2, 2
  feats = [[0, 1, f0_index], [1, 1, 2], [1, 1, 10]]
  return make_graph(a, feats, layers, 2, probs, tokens=[1, 42], logit_tokens=[99, 17][:len(probs)],
                    metadata={"model": "toy", "max_n_logits": 2, "batch_size": 4})


DIAMOND_INFLUENCE = {F0: .5, F1: .5, F2: .25, E01: .125, E11: .25, T1: .625}


def cascade():
  """L=1, T=4; fa(0) <- t0..t3 (1 each), fb(1) <- fa (1), fc(2) <- t3 (1);
  g(11) <- fb 1, <- fc 3. errors 3..6, tokens 7..10. p = 1.
  A_hat: fa = t_i 1/4 each; fb = fa 1; fc = t3 1; g = fb 1/4, fc 3/4.
  v1 = (fb .25, fc .75); v2 = (fa .25, t3 .75); v3 = .25 row fa = t_i .0625. influence:
  fa .25, fb .25, fc .75, t0..t2 .0625, t3 .8125, errors 0 (sum 2.25)."""
  a = np.zeros((12, 12))
  a[0, 7:11] = 1
  a[1, 0] = 1
  a[2, 10] = 1
  a[11, 1], a[11, 2] = 1, 3
  return make_graph(a, [[0, 3, 0], [0, 3, 1], [0, 3, 2]], (0,), 4, [1.0])


def random_dag(seed, n_f=14, L=3, T=4, K=3, density=0.5, dtype=np.float32):
  """Random signed weights on every edge a circuit-tracer graph allows: into features and
  logits only, from nodes of strictly lower level (token 0, layer j feature/error j+1,
  logits L+1)."""
  rng = np.random.default_rng(seed)
  feats = np.array([[rng.integers(L), rng.integers(T), i] for i in range(n_f)])
  level = np.concatenate([feats[:, 0] + 1, np.repeat(np.arange(L) + 1, T), np.zeros(T),
                          np.full(K, L + 1)])
  ok = level[None, :] < level[:, None]
  ok[n_f:n_f + L * T + T] = False
  a = np.where(ok & (rng.random(ok.shape) < density), rng.normal(size=ok.shape), 0.0)
  probs = rng.dirichlet(np.ones(K + 1))[:K]
  return make_graph(a, feats, tuple(range(L)), T, probs, dtype=dtype)


# ---------------------------------------------------------------- influence

def test_chain_influence_by_hand():
  g = chain(p=0.5)
  infl = cg.influence(cg.normalise(g.adjacency), g.logit_weights())
  np.testing.assert_allclose(infl, [0.5, 0, 0.5, 0], atol=1e-7)


def test_diamond_influence_by_hand_and_against_the_inverse():
  g = diamond()
  a_hat = cg.normalise(g.adjacency)
  np.testing.assert_allclose(a_hat.sum(1)[[F0, F1, F2, G1]], 1, rtol=1e-6)
  np.testing.assert_allclose(a_hat.sum(1)[[E00, E01, E10, E11, T0, T1]], 0)
  want = np.zeros(g.n_nodes)
  for i, v in DIAMOND_INFLUENCE.items():
    want[i] = v
  w = g.logit_weights()
  np.testing.assert_allclose(cg.influence(a_hat, w), want, atol=1e-7)
  b_inv = np.linalg.inv(np.eye(g.n_nodes) - a_hat.astype(np.float64)) - np.eye(g.n_nodes)
  np.testing.assert_allclose(cg.influence_matrix(a_hat), b_inv, atol=1e-6)
  np.testing.assert_allclose(w @ b_inv, want, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_equals_inverse_on_random_dags(seed):
  g = random_dag(seed, dtype=np.float64)
  a_hat = cg.normalise(g.adjacency)
  b_inv = np.linalg.inv(np.eye(g.n_nodes) - a_hat) - np.eye(g.n_nodes)
  assert np.abs(b_inv).max() > 0.1
  np.testing.assert_allclose(cg.influence_matrix(a_hat), b_inv, atol=1e-10)
  np.testing.assert_allclose(cg.influence(a_hat, g.logit_weights()), g.logit_weights() @ b_inv,
                             atol=1e-10)


def test_a_cycle_raises():
  a_hat = np.array([[0, 1.0], [1.0, 0]])
  with pytest.raises(ConfigError, match="acyclic"):
    cg.influence(a_hat, np.array([1.0, 0]), max_iter=50)
  with pytest.raises(ConfigError, match="acyclic"):
    cg.influence_matrix(a_hat, max_iter=50)


def test_normalise_clamps_empty_rows():
  a = np.array([[0, 0], [-3.0, 1.0]], np.float32)
  np.testing.assert_allclose(cg.normalise(a), [[0, 0], [0.75, 0.25]])


# ---------------------------------------------------------------- pruning

def test_chain_pruning_keeps_tied_nodes():
  # influence [f .5, e 0, t .5, g 0]; stable descending order f, t, e, g:
  # shares .5, 1, 1, 1 -> cumulative_scores f .5, t 1, e 1, g 1.
  g = chain()
  for thr in (0.4, 0.8):   # rank 0 (0.4) or 1 (0.8): cut-off .5 either way, so f and t tie
    pr = cg.prune(g, thr, 0.98)
    assert pr.node_mask.tolist() == [True, False, True, True]
    assert sorted(map(tuple, np.argwhere(pr.edge_mask))) == [(0, 2), (3, 0)]
  np.testing.assert_allclose(pr.cumulative_scores, [0.5, 1, 1, 1], atol=1e-7)


def test_cutoff_reaches_the_fraction_and_stops_at_the_last_positive_score():
  # sorted 3, 2, 2, 1 (sum 8): shares .375, .625, .875, 1 -> a share equal to the fraction
  # reaches it
  s = np.array([2.0, 3.0, 1.0, 2.0])
  assert [cg._cutoff(s, f) for f in (0.0, 0.375, 0.376, 0.875, 0.9, 1.0)] == [3, 3, 2, 2, 1, 1]
  # six 0.1s sum to 0.6000000000000001 in order but the total rounds differently: the share of
  # the last positive score is 0.9999999999999998 < 1; the cut-off must not fall to 0 (which
  # would keep every zero score) nor run past the end
  six = np.concatenate([np.full(6, 0.1), np.zeros(3)])
  assert (np.cumsum(six) / six.sum())[5] < 1.0
  assert cg._cutoff(six, 1.0) == pytest.approx(0.1)
  assert cg._cutoff(np.full(6, 0.1), 1.0) == pytest.approx(0.1)
  assert cg._cutoff(np.zeros(4), 0.5) == np.inf


def test_cumulative_shares_order_ties_by_node():
  s = np.repeat([1.0, 2.0], 30)                  # 30 ones, then 30 twos (sum 90)
  want = np.concatenate([(60 + np.arange(1, 31)) / 90, 2 * np.arange(1, 31) / 90])
  np.testing.assert_allclose(cg.cumulative_shares(s), want, rtol=1e-12)
  np.testing.assert_array_equal(cg.cumulative_shares(np.zeros(3)), np.zeros(3))


def test_diamond_pruning_by_hand():
  # descending (ties in node order): t1 .625, f0 .5, f1 .5, f2 .25, e11 .25, e01 .125, zeros;
  # cumulative / 2.25: 5/18, 1/2, 13/18, 5/6, 17/18, 1, 1...
  # node 0.8: first share >= .8 is 5/6 (f2) -> cut-off .25 keeps e11 too (tie); e01 dropped.
  g = diamond()
  pr = cg.prune(g)
  kept = set(np.flatnonzero(pr.node_mask).tolist())
  assert kept == {F0, F1, F2, E11, T0, T1, G1}
  want_cum = {T1: 5 / 18, F0: .5, F1: 13 / 18, F2: 5 / 6, E11: 17 / 18, E01: 1.0, E00: 1.0,
              E10: 1.0, T0: 1.0, G1: 1.0}
  for i, v in want_cum.items():
    assert pr.cumulative_scores[i] == pytest.approx(v, abs=1e-6), i
  # node-pruned matrix (e01 gone): f1 = (f0 1); infl' f1 .5, f2 .25, e11 .25, f0 .625, t1 .75
  # edge scores A_hat'[t,s] (infl'[t] + w[t]): f0<-t1 .625, f1<-f0 .5, f2<-f0 .125, f2<-t1 .125,
  # g<-f1 .5, g<-f2 .25, g<-e11 .25 (sum 2.375); 0.98 is reached at the last edge: keep all 7.
  edges = {(int(t), int(s)) for t, s in np.argwhere(pr.edge_mask)}
  assert edges == {(F0, T1), (F1, F0), (F2, F0), (F2, T1), (G1, F1), (G1, F2), (G1, E11)}


def test_diamond_edge_threshold_drops_a_feature_without_inputs():
  # edge shares (sorted .625 .5 .5 .25 .25 .125 .125)/2.375: .263 .474 .684 .789 .895 ...
  # 0.85 -> cut-off .25: f2's two inputs (.125) go, so f2 has no incoming edge and is
  # dropped, and with it g <- f2. 0.9 -> .947 -> cut-off .125 (tie): everything stays.
  g = diamond()
  pr = cg.prune(g, 0.8, 0.85)
  assert set(np.flatnonzero(pr.node_mask).tolist()) == {F0, F1, E11, T0, T1, G1}
  edges = {(int(t), int(s)) for t, s in np.argwhere(pr.edge_mask)}
  assert edges == {(F0, T1), (F1, F0), (G1, F1), (G1, E11)}
  assert cg.prune(g, 0.8, 0.9).edge_mask.sum() == 7


def test_pruning_is_invariant_to_the_scale_of_the_logit_weights():
  a, b = cg.prune(diamond((1.0,))), cg.prune(diamond((0.6, 0.2)))
  np.testing.assert_array_equal(a.node_mask[:G2], b.node_mask[:G2])
  np.testing.assert_array_equal(a.edge_mask, b.edge_mask[:G2, :G2])
  np.testing.assert_allclose(a.cumulative_scores[:G1], b.cumulative_scores[:G1], atol=1e-6)


def test_dead_ends_are_removed_iteratively():
  # edge scores: fa<-t_i .25*.25 = .0625 each, fb<-fa .25, fc<-t3 .75, g<-fb .25, g<-fc .75;
  # sorted .75 .75 .25 .25 .0625 x4, shares /2.25: .333 .667 .778 .889 ...; 0.85 -> cut-off .25:
  # fa loses every input (pass 1 drops fa), then fb<-fa goes (pass 2 drops fb), then g<-fb.
  # Node threshold 0.9: shares t3 .361, fc .694, fa .806, fb .917 -> cut-off .25 keeps fa, fb.
  g = cascade()
  no_edges = cg.prune(g, 0.9, 1.0)
  assert no_edges.node_mask[:3].all() and not no_edges.node_mask[3:7].any()
  pr = cg.prune(g, 0.9, 0.85)
  assert np.flatnonzero(pr.node_mask).tolist() == [2, 7, 8, 9, 10, 11]
  assert {(int(t), int(s)) for t, s in np.argwhere(pr.edge_mask)} == {(2, 10), (11, 2)}


def test_an_error_only_graph():
  # no features; nodes e(0), t(1), g(2); g <- e (1). influence e 1, t 0;
  # replacement = 0 / (0 + 1) = 0;
  # completeness: row g has error share 1 -> (0*(0+1) + 1*(1+0) + 1*0) / (1 + 1) = 0.5.
  a = np.zeros((3, 3))
  a[2, 0] = 1.0
  g = make_graph(a, np.zeros((0, 3)), (0,), 1, [1.0])
  pr = cg.prune(g)
  assert pr.node_mask.tolist() == [True, True, True]
  assert np.argwhere(pr.edge_mask).tolist() == [[2, 0]]
  s = cg.scores(g)
  assert s["replacement_score"] == pytest.approx(0.0)
  assert s["completeness_score"] == pytest.approx(0.5)


def _reference_prune(a, w, n_f, n_inner, node_thr, edge_thr):
  """A literal reading of circuit-tracer's prune_graph on the full matrix, with influence
  from the inverse: w^T ((I - A_hat)^-1 - I)."""
  n = a.shape[0]

  def infl(m):
    m = np.abs(m) / np.maximum(np.abs(m).sum(1, keepdims=True), 1e-10)
    return m, w @ (np.linalg.inv(np.eye(n) - m) - np.eye(n))

  def cut(s, f):
    s = np.sort(s.ravel())[::-1]
    c = np.cumsum(s) / s.sum()
    return s[min(np.searchsorted(c, f), max((s > 0).sum() - 1, 0))]
  _, node_infl = infl(a)
  node = node_infl >= cut(node_infl, node_thr)
  node[n_inner:] = True
  m, pi = infl(np.where(node[:, None] & node[None, :], a, 0))
  score = m * (pi + w)[:, None]
  edge = score >= cut(score, edge_thr)
  while True:
    new = node.copy()
    new[:n_inner] &= edge[:, :n_inner].any(0)
    new[:n_f] &= edge[:n_f].any(1)
    if (new == node).all():
      return node, edge
    node = new
    edge &= node[:, None] & node[None, :]


@pytest.mark.parametrize("seed,node_thr,edge_thr", [(0, 0.8, 0.98), (1, 0.5, 0.9), (2, 0.9, 0.7),
                                                    (3, 0.6, 0.6)])
def test_prune_equals_a_full_matrix_reading(seed, node_thr, edge_thr):
  g = random_dag(seed, n_f=30, density=0.3, dtype=np.float64)
  pr = cg.prune(g, node_thr, edge_thr)
  node, edge = _reference_prune(g.adjacency, g.logit_weights(), g.n_features,
                                g.token_slice.start, node_thr, edge_thr)
  np.testing.assert_array_equal(pr.node_mask, node)
  np.testing.assert_array_equal(pr.edge_mask, edge & node[:, None] & node[None, :])
  assert pr.node_mask[:g.n_features].any() and not pr.node_mask.all()   # a real cut
  assert pr.node_mask[g.token_slice.start:].all()


def test_prune_refuses_bad_thresholds():
  with pytest.raises(ConfigError, match="node_threshold"):
    cg.prune(chain(), 1.5)
  with pytest.raises(ConfigError, match="edge_threshold"):
    cg.prune(chain(), 0.8, float("nan"))


# ---------------------------------------------------------------- scores

def test_scores_without_error_edges_are_one():
  s = cg.scores(chain())
  assert s == {"replacement_score": pytest.approx(1.0), "completeness_score": pytest.approx(1.0)}


def test_diamond_scores_by_hand():
  # replacement: tokens .625 / (tokens .625 + errors .125 + .25) = 0.625.
  # completeness: error share of each row: f1 1/4, g1 1/4, others 0. infl + w:
  # f0 .5, f1 .5, f2 .25, e01 .125, e11 .25, t1 .625, g1 1 (sum 3.25);
  # sum (1 - err)(infl + w) = .5 + .375 + .25 + .125 + .25 + .625 + .75 = 2.875 -> 23/26.
  s = cg.scores(diamond())
  assert s["replacement_score"] == pytest.approx(0.625, abs=1e-6)
  assert s["completeness_score"] == pytest.approx(23 / 26, abs=1e-6)


def test_pruned_scores_by_hand():
  # kept (0.8, 0.85): f0 <- t1 2, f1 <- f0 3, g1 <- f1 4, g1 <- e11 2. A_hat: g1 = (f1 2/3,
  # e11 1/3); infl f1 2/3, e11 1/3, f0 2/3, t1 2/3 -> replacement (2/3) / (2/3 + 1/3) = 2/3.
  # completeness: only g1 has error input (1/3); infl + w sums to 4 * 2/3 + 1/3 + 1 ... :
  # f0, f1, t1 2/3 each, e11 1/3, g1 1 -> total 10/3, weighted 2 + 1/3 + 2/3 = 3 -> 0.9.
  g = diamond()
  pr = cg.prune(g, 0.8, 0.85)
  s = cg.scores(g, pr)
  assert s["replacement_score"] == pytest.approx(2 / 3, abs=1e-6)
  assert s["completeness_score"] == pytest.approx(0.9, abs=1e-6)
  # default pruning keeps all but f1 <- e01: errors .25 against tokens .75
  assert cg.scores(g, cg.prune(g))["replacement_score"] == pytest.approx(0.75, abs=1e-6)


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("change,match", [
    (dict(layers=(5, 3)), "layers"),
    (dict(features=np.array([[2, 1, 7], [1, 1, 2], [1, 1, 10]])), r"features\[0\]: layer index 2"),
    (dict(features=np.array([[0, 1, 7], [0, 1, 7], [1, 1, 10]])), "appears twice"),
    (dict(features=np.array([[0, 5, 7], [1, 1, 2], [1, 1, 10]])), r"features\[0\]: position 5"),
    (dict(logit_probs=np.array([1.5], np.float32)), "logit_probs"),
    (dict(activations=np.array([1, np.nan, 3], np.float32)), "activations"),
    (dict(token_strings=["a"]), "token_strings"),
    (dict(adjacency=np.zeros((9, 9), np.float32)), r"adjacency: shape \(9, 9\)"),
])
def test_bad_graphs_raise_one_line(change, match):
  g = diamond()
  fields = {f: getattr(g, f) for f in ("adjacency", "features", "activations", "layers",
                                       "input_tokens", "token_strings", "logit_tokens",
                                       "logit_probs", "logit_strings", "prompt", "scan", "metadata")}
  fields.update(change)
  with pytest.raises(ConfigError, match=match) as e:
    cg.Graph(**fields)
  assert "\n" not in str(e.value)


def test_sources_on_error_rows_are_refused():
  a = diamond().adjacency.copy()
  a[E10, T0] = 1.0
  with pytest.raises(ConfigError, match="row 5 .*error or token"):
    make_graph(a, [[0, 1, 7], [1, 1, 2], [1, 1, 10]], (3, 5), 2, [1.0])


def test_graph_sizes_and_blocks():
  g = diamond((0.6, 0.2))
  assert (g.n_features, g.n_pos, g.n_layers, g.n_logits, g.n_nodes) == (3, 2, 2, 2, 11)
  assert (g.error_index(1, 1), g.token_index(1), g.logit_index(1)) == (E11, T1, G2)
  assert g.error_slice == slice(3, 7) and g.token_slice == slice(7, 9)
  assert g.logit_slice == slice(9, 11)


# ---------------------------------------------------------------- JSON

def _json(g, pr, **kw):
  return cg.to_json(g, pr, "toy-graph", node_threshold=pr.node_threshold,
                    edge_threshold=pr.edge_threshold, **kw)


def test_json_nodes_by_hand():
  g = diamond((0.6, 0.2))
  d = _json(g, cg.prune(g))
  nodes = {n["node_id"]: n for n in d["nodes"]}
  # features: l = layers[j]; Cantor (l + i)(l + i + 1)/2 + i
  # 3_7: 10*11/2 + 7 = 62; 5_2: 7*8/2 + 2 = 30; 5_10: 15*16/2 + 10 = 130
  want = {"3_7_1": (62, "3", 1, "cross layer transcoder", "3_7-0"),
          "5_2_1": (30, "5", 1, "cross layer transcoder", "5_2-0"),
          "5_10_1": (130, "5", 1, "cross layer transcoder", "5_10-0"),
          "0_5_1": (-1, "5", 1, "mlp reconstruction error", "5_1-0"),
          "E_1_0": (0, "E", 0, "embedding", "E_1-0"),
          "E_42_1": (1, "E", 1, "embedding", "E_42-1"),
          "7_99_1": (99, "7", 1, "logit", "L_99-1"),       # logit layer max(layers) + 2
          "7_17_1": (17, "7", 1, "logit", "L_17-1")}
  assert set(nodes) == set(want)
  for nid, (feature, layer, ctx, ftype, js) in want.items():
    n = nodes[nid]
    assert (n["feature"], n["layer"], n["ctx_idx"], n["feature_type"], n["jsNodeId"]) == (
        feature, layer, ctx, ftype, js), nid
  assert [n["node_id"] for n in d["nodes"]][:4] == ["3_7_1", "5_2_1", "5_10_1", "0_5_1"]
  assert nodes["7_99_1"]["clerp"] == 'Output " w0" (p=0.600)'
  assert nodes["7_17_1"]["clerp"] == 'Output " w1" (p=0.200)'
  assert nodes["7_99_1"]["is_target_logit"] and not nodes["7_17_1"]["is_target_logit"]
  assert nodes["7_99_1"]["token_prob"] == pytest.approx(0.6)
  assert nodes["7_99_1"]["influence"] is None
  assert nodes["3_7_1"]["activation"] == 1.0 and nodes["0_5_1"]["activation"] is None
  assert nodes["E_42_1"]["influence"] == pytest.approx(5 / 18, abs=1e-6)
  assert nodes["5_10_1"]["influence"] == pytest.approx(5 / 6, abs=1e-6)


def test_json_links_by_hand_and_only_between_kept_nodes():
  g = diamond((0.6, 0.2))
  d = _json(g, cg.prune(g))
  links = {(l["source"], l["target"]): l["weight"] for l in d["links"]}
  assert links == {("E_42_1", "3_7_1"): 2.0, ("3_7_1", "5_2_1"): 3.0, ("3_7_1", "5_10_1"): -1.0,
                   ("E_42_1", "5_10_1"): 1.0, ("5_2_1", "7_99_1"): 4.0,
                   ("5_10_1", "7_99_1"): 2.0, ("0_5_1", "7_99_1"): 2.0}
  d = _json(g, cg.prune(g, 0.8, 0.85))
  ids = {n["node_id"] for n in d["nodes"]}
  assert ids == {"3_7_1", "5_2_1", "0_5_1", "E_1_0", "E_42_1", "7_99_1", "7_17_1"}
  assert {(l["source"], l["target"]) for l in d["links"]} == {
      ("E_42_1", "3_7_1"), ("3_7_1", "5_2_1"), ("5_2_1", "7_99_1"), ("0_5_1", "7_99_1")}


def test_json_links_of_random_graphs_join_written_nodes():
  g = random_dag(4, n_f=40)
  pr = cg.prune(g, 0.7, 0.9)
  d = _json(g, pr)
  ids = [n["node_id"] for n in d["nodes"]]
  assert len(ids) == len(set(ids))
  assert all(l["source"] in ids and l["target"] in ids for l in d["links"])
  assert len(d["links"]) == int(pr.edge_mask.sum())
  written = sum(1 for n in d["nodes"] if n["feature_type"] == "cross layer transcoder")
  assert written == int(pr.node_mask[:g.n_features].sum())


def test_json_id_collision_renames_the_error_node():
  # layers (0, 1): feature (layer 0, index 1, pos 1) is "0_1_1", and so is error (layer 1, pos 1)
  g = diamond(layers=(0, 1), f0_index=1)
  d = _json(g, cg.prune(g))
  by_id = {n["node_id"]: n for n in d["nodes"]}
  assert by_id["0_1_1"]["feature_type"] == "cross layer transcoder"
  err = by_id["err_1_1"]
  assert err["feature_type"] == "mlp reconstruction error" and err["layer"] == "1"
  assert err["ctx_idx"] == 1
  assert any(l["source"] == "err_1_1" for l in d["links"])
  # node threshold 0.7 (cut-off .5) drops the error: the plain id stays the feature's
  d = _json(g, cg.prune(g, 0.7, 0.98))
  assert "0_1_1" in {n["node_id"] for n in d["nodes"]}
  assert "err_1_1" not in {n["node_id"] for n in d["nodes"]}


def _native(x):
  if isinstance(x, dict):
    return all(type(k) is str and _native(v) for k, v in x.items())
  if isinstance(x, list):
    return all(_native(v) for v in x)
  return type(x) in (str, int, float, bool, type(None))


def test_json_metadata_and_native_types():
  g = diamond((0.6, 0.2))
  g.metadata["timing_s"] = np.float32(1.5)
  g.metadata["shape"] = (np.int64(3), 4)
  pr = cg.prune(g)
  d = _json(g, pr, feature_json_base_url="features", info={"description": "a toy"})
  assert _native(d)
  json.dumps(d, allow_nan=False)
  m = d["metadata"]
  assert (m["slug"], m["scan"], m["prompt"], m["prompt_tokens"]) == ("toy-graph", "toy-scan",
                                                                     "t0 t1", ["t0", "t1"])
  assert m["schema_version"] == 1 and m["node_threshold"] == 0.8
  assert m["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
  assert m["generation_settings"] == {"max_n_logits": 2, "batch_size": 4}
  assert m["info"]["generator"]["name"] == "jaxcode" and m["info"]["description"] == "a toy"
  assert m["feature_details"] == {"feature_json_base_url": "features"}
  assert m["jaxcode"]["scores"] == pytest.approx(cg.scores(g))
  assert m["jaxcode"]["pruned_scores"] == pytest.approx(cg.scores(g, pr))
  assert m["jaxcode"]["graph_metadata"]["shape"] == [3, 4]
  assert d["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                          "sg_pos": ""}


@pytest.mark.parametrize("use_jsonschema", [True, False])
def test_json_schema(use_jsonschema):
  if use_jsonschema:   # the test extra installs jsonschema; without it this case fails
    assert importlib.util.find_spec("jsonschema") is not None, "pip install jsonschema"
  g = diamond((0.6, 0.2))
  d = _json(g, cg.prune(g))
  assert cg.validate_json(d, use_jsonschema) is d
  broken = json.loads(json.dumps(d))
  del broken["metadata"]["prompt_tokens"]
  with pytest.raises(ConfigError, match="prompt_tokens"):
    cg.validate_json(broken, use_jsonschema)
  for path, value, match in ((("nodes", 0, "layer"), 3, "layer|3"),
                             (("links", 0, "weight"), "2.0", "weight|2.0"),
                             (("metadata", "pruning_settings", "edge_threshold"), 1.5, "1.5")):
    bad = json.loads(json.dumps(d))
    *head, last = path
    node = bad
    for p in head:
      node = node[p]
    node[last] = value
    with pytest.raises(ConfigError, match=match):
      cg.validate_json(bad, use_jsonschema)
  bad = json.loads(json.dumps(d))
  del bad["links"][0]["target"]
  with pytest.raises(ConfigError, match="target"):
    cg.validate_json(bad, use_jsonschema)


def test_write_graph_json_and_the_metadata_index(tmp_path):
  g = diamond((0.6, 0.2))
  pr = cg.prune(g)
  d1 = cg.to_json(g, pr, "one", node_threshold=0.8, edge_threshold=0.98)
  d2 = cg.to_json(g, pr, "two", node_threshold=0.8, edge_threshold=0.98)
  cg.write_graph_json(str(tmp_path / "one.json"), d1)
  cg.write_graph_json(str(tmp_path / "two.json"), d2)
  d1b = dict(d1, metadata=dict(d1["metadata"], prompt="changed"))
  cg.write_graph_json(str(tmp_path / "one.json"), d1b)
  assert json.loads((tmp_path / "one.json").read_text()) == d1b
  assert json.loads((tmp_path / "two.json").read_text()) == d2
  index = json.loads((tmp_path / "graph-metadata.json").read_text())
  assert [m["slug"] for m in index["graphs"]] == ["two", "one"]
  assert index["graphs"][1] == d1b["metadata"]
  assert sorted(os.listdir(tmp_path)) == ["graph-metadata.json", "one.json", "two.json"]
  broken = json.loads(json.dumps(d1))
  del broken["metadata"]["prompt_tokens"]
  with pytest.raises(ConfigError):
    cg.write_graph_json(str(tmp_path / "bad.json"), broken)
  assert not (tmp_path / "bad.json").exists()
