"""Attribution graphs once the adjacency exists: pruning, graph scores, the Neuronpedia JSON.

**Graph.** n nodes in circuit-tracer's order (rows and columns alike):

    [features n_f] [errors L*T, index j*T + pos] [tokens T] [logits K]

A[t, s] is the direct effect of source s on target t (rows = targets); only feature and
logit rows are nonzero. Feature i is (j, pos, idx): transcoder layer j (model layer
layers[j]), position, feature index; error (j, pos) is layer j's reconstruction error at pos.
The logit weights w are zero except w[logit k] = p_k, the model's probability of token k.

**Influence** (circuit-tracer's `graph.py`). Row-normalised absolute weights

    A_hat[t, s] = |A[t, s]| / max(sum_s' |A[t, s']|, 1e-10)          (each nonzero row sums to 1)

and the total influence B = A_hat + A_hat^2 + ... = (I - A_hat)^{-1} - I: B[t, s] sums the
products of normalised weights over every path s -> ... -> t. The graph is a DAG (edges go
up the layers, tokens are sources only), so A_hat is nilpotent and the series ends: we
iterate v <- v A_hat from v = w A_hat until v is exactly zero (at most the longest path,
capped; a cycle raises). Node influence infl = w^T B, i.e. infl[s] = sum_t w_t B[t, s].

**Pruning** (`prune`, defaults 0.8 / 0.98):
  1. nodes: sort infl descending; keep the smallest prefix whose share of sum(infl) reaches
     node_threshold, i.e. every node with infl >= the score at that rank (ties at the cut are
     all kept); tokens and logits always.
  2. edges: on the node-pruned matrix A' (dropped rows and columns zeroed) with its own
     A_hat' and infl', edge_score[t, s] = A_hat'[t, s] * (infl'[t] + w[t]); keep the edges
     with score >= the score at the rank where the sorted cumulative share reaches
     edge_threshold (never past the last positive score).
  3. repeat until nothing changes: drop feature and error nodes with no kept outgoing edge,
     feature nodes with no kept incoming edge, and the edges of dropped nodes.
`cumulative_scores[i]` = the share of sum(infl) held by the nodes ranked up to and
including i (descending infl, ties in node order); the JSON writes it as `influence` and
the frontend shows a node when influence <= its pruning threshold.

**Scores** (circuit-tracer's `compute_graph_scores`), on A or on the pruned A:

    replacement  = sum_{s in tokens} infl[s] / sum_{s in tokens, errors} infl[s]
    completeness = sum_t (1 - sum_{s in errors} A_hat[t, s]) (infl[t] + w[t]) / sum_t (infl[t] + w[t])

Replacement is 1 when no path from a token to a logit passes an error node; completeness is
the influence-weighted share of each node's normalised input that does not come from errors.

**JSON** (Neuronpedia / circuit-tracer graph schema, schema_version 1; l = layers[j]):

    node      node_id          feature                        layer  jsNodeId
    feature   l_idx_pos        (l+idx)(l+idx+1)/2 + idx       "l"    l_idx-0
    error     0_l_pos          -1                             "l"    l_pos-0
    token     E_tok_pos        pos                            "E"    E_tok-pos
    logit     Lo_tok_last      tok                            "Lo"   L_tok-last

with Lo = max(layers) + 2 (= n_layers + 1 when the transcoders cover every model layer) and
last = T - 1. An error id 0_l_pos equals the id of a layer-0 feature with index l at pos
(it happens on real graphs: Gemma 3 270M, "The capital of France is"); such an error node is
written as err_l_pos instead (its layer and ctx_idx fields say where it is). Any other
collision among the written nodes raises ConfigError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from jaxcode.errors import ConfigError, finite

SCHEMA_VERSION = 1
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources",
                           "graph-schema.json")
FEATURE_TYPE = "cross layer transcoder"     # circuit-tracer's label, per-layer transcoders too
ERROR_TYPE = "mlp reconstruction error"
GENERATION_KEYS = ("max_n_logits", "desired_logit_prob", "batch_size", "max_feature_nodes")


@dataclasses.dataclass(eq=False)
class Graph:
  """An attribution graph of one prompt (node order in the module docstring); validated on
  construction (ConfigError naming the bad field)."""
  adjacency: np.ndarray     # [n, n] float; rows = targets, columns = sources
  features: np.ndarray      # [n_f, 3] int64 (layer index j into `layers`, position, feature)
  activations: np.ndarray   # [n_f] float32 activation of each feature node
  layers: tuple             # model layer numbers of the transcoder layers (length L)
  input_tokens: np.ndarray  # [n_pos] int64 token ids of the prompt
  token_strings: list       # [n_pos] decoded token strings
  logit_tokens: np.ndarray  # [n_logits] int64 vocabulary ids of the logit nodes
  logit_probs: np.ndarray   # [n_logits] float32 model probability of each
  logit_strings: list       # [n_logits] decoded
  prompt: str
  scan: str                 # id of the transcoder set (free text)
  metadata: dict            # free, JSON-serialisable: model name, settings, timings

  def __post_init__(self):
    self.validate()

  # ---- sizes and blocks
  @property
  def n_features(self) -> int:
    return int(self.features.shape[0])

  @property
  def n_pos(self) -> int:
    return int(self.input_tokens.shape[0])

  @property
  def n_layers(self) -> int:
    return len(self.layers)

  @property
  def n_logits(self) -> int:
    return int(self.logit_tokens.shape[0])

  @property
  def n_errors(self) -> int:
    return self.n_layers * self.n_pos

  @property
  def n_nodes(self) -> int:
    return self.n_features + self.n_errors + self.n_pos + self.n_logits

  @property
  def feature_slice(self) -> slice:
    return slice(0, self.n_features)

  @property
  def error_slice(self) -> slice:
    return slice(self.n_features, self.n_features + self.n_errors)

  @property
  def token_slice(self) -> slice:
    start = self.n_features + self.n_errors
    return slice(start, start + self.n_pos)

  @property
  def logit_slice(self) -> slice:
    return slice(self.n_nodes - self.n_logits, self.n_nodes)

  def error_index(self, j: int, pos: int) -> int:
    """Node index of the error of transcoder layer j (an index into `layers`) at pos."""
    return self.n_features + j * self.n_pos + pos

  def token_index(self, pos: int) -> int:
    return self.token_slice.start + pos

  def logit_index(self, k: int) -> int:
    return self.logit_slice.start + k

  def logit_weights(self) -> np.ndarray:
    """w [n]: the logit probabilities on the logit rows, zero elsewhere (adjacency dtype)."""
    w = np.zeros(self.n_nodes, self.adjacency.dtype)
    w[self.logit_slice] = self.logit_probs
    return w

  def validate(self) -> "Graph":
    _check_header(self)
    _check_nodes(self)
    _check_adjacency(self)
    return self


def _int_array(name: str, value, ndim: int) -> np.ndarray:
  a = np.asarray(value)
  if a.ndim != ndim or (a.size and not np.issubdtype(a.dtype, np.integer)):
    raise ConfigError(f"graph.{name}: shape {a.shape} dtype {a.dtype}: expected a {ndim}-d "
                      "integer array")
  return a.astype(np.int64)


def _float_array(name: str, value, shape: tuple) -> np.ndarray:
  a = np.asarray(value)
  if a.shape != shape or (a.size and not np.issubdtype(a.dtype, np.floating)):
    raise ConfigError(f"graph.{name}: shape {a.shape} dtype {a.dtype}: expected a float array "
                      f"of shape {shape}")
  if not np.all(np.isfinite(a)):
    raise ConfigError(f"graph.{name}: holds NaN or Inf: expected finite values")
  return a


def _check_header(g: Graph):
  """layers, prompt tokens and their strings, the text fields."""
  layers = g.layers
  if (not isinstance(layers, (tuple, list)) or not layers or not all(
      isinstance(l, (int, np.integer)) and not isinstance(l, bool) and l >= 0 for l in layers)
      or any(b <= a for a, b in zip(layers, layers[1:]))):
    raise ConfigError(f"graph.layers={layers!r}: expected a non-empty, strictly increasing "
                      "tuple of model layer numbers >= 0")
  g.layers = tuple(int(l) for l in layers)
  g.input_tokens = _int_array("input_tokens", g.input_tokens, 1)
  if g.n_pos < 1:
    raise ConfigError("graph.input_tokens is empty: expected at least one prompt token")
  v = g.token_strings
  if not isinstance(v, (list, tuple)) or len(v) != g.n_pos or not all(isinstance(s, str) for s in v):
    raise ConfigError(f"graph.token_strings: expected a list of {g.n_pos} strings (one per "
                      "prompt token)")
  g.token_strings = list(v)
  for name in ("prompt", "scan"):
    if not isinstance(getattr(g, name), str):
      raise ConfigError(f"graph.{name}={getattr(g, name)!r}: expected a string")
  if not isinstance(g.metadata, dict):
    raise ConfigError(f"graph.metadata: {type(g.metadata).__name__}: expected a dict")


def _check_nodes(g: Graph):
  """features and their activations, logit tokens, probabilities and strings."""
  if np.size(g.features) == 0:             # no feature nodes: any empty array will do
    g.features = np.zeros((0, 3), np.int64)
  g.features = _int_array("features", g.features, 2)
  if g.features.shape[1] != 3:
    raise ConfigError(f"graph.features: shape {g.features.shape}: expected [n_features, 3] "
                      "(layer index, position, feature index)")
  j, pos, idx = g.features.T
  for name, col, hi in (("layer index", j, g.n_layers), ("position", pos, g.n_pos),
                        ("feature index", idx, None)):
    bad = (col < 0) | (col >= hi) if hi is not None else col < 0
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      rng = f"in [0, {hi})" if hi is not None else ">= 0"
      raise ConfigError(f"graph.features[{i}]: {name} {int(col[i])}: expected {rng}")
  if len({tuple(r) for r in g.features.tolist()}) != g.n_features:
    raise ConfigError("graph.features: a (layer, position, feature) triple appears twice: "
                      "expected each feature node once")
  g.activations = _float_array("activations", g.activations, (g.n_features,))
  g.logit_tokens = _int_array("logit_tokens", g.logit_tokens, 1)
  if g.n_logits < 1:
    raise ConfigError("graph.logit_tokens is empty: expected at least one logit node")
  g.logit_probs = _float_array("logit_probs", g.logit_probs, (g.n_logits,))
  if np.any(g.logit_probs < 0) or np.any(g.logit_probs > 1):
    raise ConfigError(f"graph.logit_probs={g.logit_probs.tolist()}: expected probabilities "
                      "in [0, 1]")
  v = g.logit_strings
  if not isinstance(v, (list, tuple)) or len(v) != g.n_logits or not all(
      isinstance(s, str) for s in v):
    raise ConfigError(f"graph.logit_strings: expected a list of {g.n_logits} strings (one per "
                      "logit node)")
  g.logit_strings = list(v)


def _check_adjacency(g: Graph):
  n = g.n_nodes
  g.adjacency = _float_array("adjacency", g.adjacency, (n, n))
  dead = g.adjacency[g.error_slice.start:g.token_slice.stop]
  if np.any(dead != 0):
    r = g.error_slice.start + int(np.flatnonzero(np.any(dead != 0, axis=1))[0])
    raise ConfigError(f"graph.adjacency row {r} (an error or token node) has nonzero entries: "
                      "expected only feature and logit rows to have sources")


# ---------------------------------------------------------------- influence

def normalise(adjacency_NN: np.ndarray) -> np.ndarray:
  """A_hat = |A| / max(row sums of |A|, 1e-10): rows (targets) of absolute weights sum to 1."""
  a = np.abs(adjacency_NN)
  return a / np.maximum(a.sum(axis=1, keepdims=True), a.dtype.type(1e-10))


def influence(a_hat_NN: np.ndarray, weights_N: np.ndarray, max_iter: int = 1000) -> np.ndarray:
  """w^T (A_hat + A_hat^2 + ...), iterating v <- v A_hat until v is exactly zero.

  ConfigError when it has not ended after max_iter products (a cycle: not a DAG)."""
  v = weights_N @ a_hat_NN
  total = v.copy()
  for _ in range(max_iter):
    if not v.any():
      return total
    v = v @ a_hat_NN
    total += v
  raise ConfigError(f"influence did not vanish after {max_iter} powers of the normalised "
                    "adjacency: expected an acyclic graph (edges only from earlier to later nodes)")


def influence_matrix(a_hat_NN: np.ndarray, max_iter: int = 1000) -> np.ndarray:
  """B = A_hat + A_hat^2 + ... as a full matrix (the same series; for small graphs)."""
  p = a_hat_NN.copy()
  total = p.copy()
  for _ in range(max_iter):
    if not p.any():
      return total
    p = p @ a_hat_NN
    total += p
  raise ConfigError(f"A_hat^k did not vanish by k={max_iter}: expected an acyclic graph")


def _cutoff(scores: np.ndarray, fraction: float) -> float:
  """The score at the rank where the descending cumulative share first reaches `fraction`
  (never past the last positive score); +inf when every score is zero."""
  s = np.sort(scores.ravel())[::-1].astype(np.float64)
  total = s.sum()
  if not total > 0:
    return np.inf
  share = np.cumsum(s) / total
  i = int(np.searchsorted(share, fraction, side="left"))
  return float(s[min(i, int((s > 0).sum()) - 1)])


def cumulative_shares(scores_N: np.ndarray) -> np.ndarray:
  """[n] float64: each node's cumulative share of sum(scores) in descending order (ties in
  node order); zeros when the scores are all zero."""
  order = np.argsort(-scores_N.astype(np.float64), kind="stable")
  s = scores_N.astype(np.float64)[order]
  total = s.sum()
  out = np.zeros(scores_N.shape[0], np.float64)
  if total > 0:
    out[order] = np.cumsum(s) / total
  return out


# ---------------------------------------------------------------- pruning

@dataclasses.dataclass(frozen=True, eq=False)
class Pruned:
  """What `prune` keeps: node_mask [n] bool, edge_mask [n, n] bool (rows = targets),
  cumulative_scores [n] float64 (the JSON's `influence`), and the thresholds used."""
  node_mask: np.ndarray
  edge_mask: np.ndarray
  cumulative_scores: np.ndarray
  node_threshold: float
  edge_threshold: float


def _drop_dead_ends(node_K: np.ndarray, edge_KK: np.ndarray, n_feat: int, n_inner: int):
  """Repeatedly drop nodes [:n_inner] (features, errors) without a kept outgoing edge and
  nodes [:n_feat] (features) without a kept incoming edge, with their edges (in place)."""
  while True:
    edge_KK[~node_K, :] = False
    edge_KK[:, ~node_K] = False
    new = node_K.copy()
    new[:n_inner] &= edge_KK[:, :n_inner].any(axis=0)
    new[:n_feat] &= edge_KK[:n_feat].any(axis=1)
    if np.array_equal(new, node_K):
      return node_K, edge_KK
    node_K = new


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
  """Keeps the nodes and edges carrying node_threshold / edge_threshold of the influence on
  the logits (module docstring, steps 1-3)."""
  node_threshold = finite("node_threshold", node_threshold, 0.0, 1.0)
  edge_threshold = finite("edge_threshold", edge_threshold, 0.0, 1.0)
  a, w = graph.adjacency, graph.logit_weights()
  infl = influence(normalise(a), w)
  node_mask = infl >= _cutoff(infl, node_threshold)
  node_mask[graph.token_slice.start:] = True
  # step 2 on the kept block only: dropped rows/columns are zero, so A_hat', infl' and the
  # sorted shares of the kept entries are those of the zeroed full matrix
  keep = np.flatnonzero(node_mask)
  a_hat = normalise(a[np.ix_(keep, keep)])
  infl_k = influence(a_hat, w[keep])
  score_KK = a_hat * (infl_k + w[keep])[:, None]
  edge_KK = score_KK >= _cutoff(score_KK, edge_threshold)
  n_feat = int((keep < graph.n_features).sum())
  n_inner = int((keep < graph.token_slice.start).sum())
  node_K, edge_KK = _drop_dead_ends(np.ones(keep.size, bool), edge_KK, n_feat, n_inner)
  node_mask = np.zeros(graph.n_nodes, bool)
  node_mask[keep[node_K]] = True
  edge_mask = np.zeros((graph.n_nodes, graph.n_nodes), bool)
  edge_mask[np.ix_(keep, keep)] = edge_KK
  return Pruned(node_mask, edge_mask, cumulative_shares(infl), node_threshold, edge_threshold)


def pruned_adjacency(graph: Graph, pruned: Pruned) -> np.ndarray:
  """A with every edge outside pruned.edge_mask (or touching a dropped node) set to zero."""
  keep = pruned.edge_mask & pruned.node_mask[:, None] & pruned.node_mask[None, :]
  return np.where(keep, graph.adjacency, graph.adjacency.dtype.type(0))


def scores(graph: Graph, pruned: Pruned | None = None) -> dict:
  """{replacement_score, completeness_score} of the graph, or of its pruned part (module
  docstring). replacement_score is NaN when no token or error node has influence."""
  a = graph.adjacency if pruned is None else pruned_adjacency(graph, pruned)
  w = graph.logit_weights()
  a_hat = normalise(a)
  infl = influence(a_hat, w).astype(np.float64)
  tok, err = infl[graph.token_slice].sum(), infl[graph.error_slice].sum()
  replacement = tok / (tok + err) if tok + err > 0 else float("nan")
  non_error = 1.0 - a_hat[:, graph.error_slice].astype(np.float64).sum(axis=1)
  out = infl + w
  completeness = float((non_error * out).sum() / out.sum())
  return dict(replacement_score=float(replacement), completeness_score=completeness)


# ---------------------------------------------------------------- JSON

def cantor(layer: int, index: int) -> int:
  """Cantor pairing (l + i)(l + i + 1)/2 + i: Neuronpedia's `feature` for schema_version 1."""
  return (layer + index) * (layer + index + 1) // 2 + index


def logit_layer(graph: Graph) -> int:
  """The layer number written for logits: max(layers) + 2 (n_layers + 1 when the
  transcoders cover every model layer 0..n_layers-1)."""
  return graph.layers[-1] + 2


def _node(node_id, feature, layer, ctx, ftype, js, clerp="", influence=None, activation=None,
          token_prob=0.0, target=False) -> dict:
  return {"node_id": node_id, "feature": int(feature), "layer": str(layer), "ctx_idx": int(ctx),
          "feature_type": ftype, "jsNodeId": js, "clerp": clerp,
          "influence": None if influence is None else float(influence),
          "activation": None if activation is None else float(activation),
          "token_prob": float(token_prob), "is_target_logit": bool(target), "run_idx": 0,
          "reverse_ctx_idx": 0}


def node_record(graph: Graph, i: int, influence: float | None = None) -> dict:
  """The JSON node of node index i (conventions in the module docstring)."""
  nf, T = graph.n_features, graph.n_pos
  if i < nf:
    j, pos, idx = (int(v) for v in graph.features[i])
    l = graph.layers[j]
    return _node(f"{l}_{idx}_{pos}", cantor(l, idx), l, pos, FEATURE_TYPE, f"{l}_{idx}-0",
                 influence=influence, activation=graph.activations[i])
  if i < graph.token_slice.start:
    j, pos = divmod(i - nf, T)
    l = graph.layers[j]
    return _node(f"0_{l}_{pos}", -1, l, pos, ERROR_TYPE, f"{l}_{pos}-0", influence=influence)
  if i < graph.logit_slice.start:
    pos = i - graph.token_slice.start
    tok = int(graph.input_tokens[pos])
    return _node(f"E_{tok}_{pos}", pos, "E", pos, "embedding", f"E_{tok}-{pos}",
                 influence=influence)
  k = i - graph.logit_slice.start
  tok, p, lo, last = int(graph.logit_tokens[k]), float(graph.logit_probs[k]), logit_layer(graph), T - 1
  return _node(f"{lo}_{tok}_{last}", tok, lo, last, "logit", f"L_{tok}-{last}",
               clerp=f'Output "{graph.logit_strings[k]}" (p={p:.3f})', token_prob=p,
               target=k == int(np.argmax(graph.logit_probs)))


def _describe(graph: Graph, i: int) -> str:
  if i < graph.n_features:
    j, pos, idx = (int(v) for v in graph.features[i])
    return f"feature (layer {graph.layers[j]}, index {idx}, position {pos})"
  j, pos = divmod(i - graph.n_features, graph.n_pos)
  return f"error (layer {graph.layers[j]}, position {pos})"


def _nodes_and_links(graph: Graph, pruned: Pruned) -> tuple[list, list]:
  """Kept nodes (node order; features and errors only when on a kept link) and kept links
  {source, target, weight = A[target, source]}; ConfigError on a node_id collision."""
  dst, src = np.nonzero(pruned.edge_mask & pruned.node_mask[:, None] & pruned.node_mask[None, :])
  used = set(dst.tolist()) | set(src.tolist())
  always = graph.token_slice.start
  kept = [int(i) for i in np.flatnonzero(pruned.node_mask) if i >= always or i in used]
  cum = pruned.cumulative_scores
  records, owner = {}, {}
  for i in kept:
    rec = node_record(graph, i, None if i >= graph.logit_slice.start else cum[i])
    if rec["node_id"] in owner and rec["feature_type"] == ERROR_TYPE:
      rec["node_id"] = f"err_{rec['layer']}_{rec['ctx_idx']}"    # 0_l_pos is a feature's id
    other = owner.setdefault(rec["node_id"], i)
    if other != i:
      raise ConfigError(f"node_id {rec['node_id']!r} names both {_describe(graph, other)} and "
                        f"{_describe(graph, i)}: expected unique ids (circuit-tracer's error id "
                        "0_layer_pos collides with layer-0 feature `layer`); cannot write this graph")
    records[i] = rec
  weights = graph.adjacency[dst, src].tolist()
  links = [{"source": records[s]["node_id"], "target": records[t]["node_id"], "weight": float(x)}
           for t, s, x in zip(dst.tolist(), src.tolist(), weights)]
  return [records[i] for i in kept], links


def _jsonable(x: Any) -> Any:
  """x with numpy scalars/arrays, tuples and non-str keys made JSON-native."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x)
  if x is None or isinstance(x, str):
    return x
  raise ConfigError(f"graph metadata value {x!r} of type {type(x).__name__}: expected "
                    "JSON-serialisable values")


def _metadata(graph: Graph, slug: str, node_threshold: float, edge_threshold: float,
              feature_json_base_url: str | None, info: dict | None) -> dict:
  import jaxcode
  gen = graph.metadata.get("generation_settings") or {
      k: graph.metadata[k] for k in GENERATION_KEYS if k in graph.metadata}
  meta = {"slug": slug, "scan": graph.scan, "transcoder_list": [],
          "prompt_tokens": list(graph.token_strings), "prompt": graph.prompt,
          "node_threshold": float(node_threshold), "schema_version": SCHEMA_VERSION,
          "info": {"generator": {"name": "jaxcode", "version": jaxcode.__version__},
                   "create_time_ms": int(time.time() * 1000), **(info or {})},
          "generation_settings": gen,
          "pruning_settings": {"node_threshold": float(node_threshold),
                               "edge_threshold": float(edge_threshold)}}
  if feature_json_base_url is not None:
    meta["feature_details"] = {"feature_json_base_url": feature_json_base_url}
  return meta


def to_json(graph: Graph, pruned: Pruned, slug: str, *, node_threshold: float,
            edge_threshold: float, feature_json_base_url: str | None = None,
            info: dict | None = None) -> dict:
  """The pruned graph as a Neuronpedia graph dict (validated against graph-schema.json).

  metadata.jaxcode carries the model layers, the unpruned sizes, graph.metadata and the
  replacement / completeness scores of the full and of the pruned graph."""
  if not isinstance(slug, str) or not slug:
    raise ConfigError(f"slug={slug!r}: expected a non-empty string")
  if pruned.node_mask.shape != (graph.n_nodes,) or pruned.edge_mask.shape != graph.adjacency.shape:
    raise ConfigError(f"pruned masks {pruned.node_mask.shape}, {pruned.edge_mask.shape}: "
                      f"expected the graph's {graph.n_nodes} nodes")
  nodes, links = _nodes_and_links(graph, pruned)
  meta = _metadata(graph, slug, node_threshold, edge_threshold, feature_json_base_url, info)
  meta["jaxcode"] = {"layers": list(graph.layers), "n_nodes": graph.n_nodes,
                     "n_features": graph.n_features, "graph_metadata": graph.metadata,
                     "scores": scores(graph), "pruned_scores": scores(graph, pruned)}
  d = _jsonable({"metadata": meta,
                 "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both",
                             "clickedId": "", "sg_pos": ""},
                 "nodes": nodes, "links": links})
  try:
    json.dumps(d, allow_nan=False)
  except ValueError as e:
    raise ConfigError(f"graph JSON of {slug!r} holds NaN or Inf ({e}): expected finite "
                      "metadata values") from None
  validate_json(d)
  return d


# ---------------------------------------------------------------- schema and files

def load_schema() -> dict:
  with open(SCHEMA_FILE, encoding="utf-8") as f:
    return json.load(f)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(x, name: str) -> bool:
  if name == "integer":
    return isinstance(x, int) and not isinstance(x, bool)
  if name == "number":
    return isinstance(x, (int, float)) and not isinstance(x, bool)
  return isinstance(x, _TYPES[name])


def _check_minimal(x, schema: dict, where: str):
  """The subset of draft-07 that graph-schema.json uses (type, required, properties, items,
  enum, const, minLength, minimum, maximum), for interpreters without jsonschema;
  ConfigError at the first violation."""
  types = schema.get("type")
  if types is not None:
    types = [types] if isinstance(types, str) else types
    if not any(_type_ok(x, t) for t in types):
      raise ConfigError(f"graph JSON {where}: {type(x).__name__} value: expected {' or '.join(types)}")
  if "enum" in schema and x not in schema["enum"]:
    raise ConfigError(f"graph JSON {where}={x!r}: expected one of {schema['enum']}")
  if "const" in schema and x != schema["const"]:
    raise ConfigError(f"graph JSON {where}={x!r}: expected {schema['const']!r}")
  if isinstance(x, str) and len(x) < schema.get("minLength", 0):
    raise ConfigError(f"graph JSON {where}={x!r}: expected at least {schema['minLength']} characters")
  if _type_ok(x, "number") and not schema.get("minimum", x) <= x <= schema.get("maximum", x):
    raise ConfigError(f"graph JSON {where}={x!r}: expected a number in "
                      f"[{schema.get('minimum', '-inf')}, {schema.get('maximum', 'inf')}]")
  if isinstance(x, dict):
    for key in schema.get("required", []):
      if key not in x:
        raise ConfigError(f"graph JSON {where}: missing required key {key!r}")
    for key, sub in schema.get("properties", {}).items():
      if key in x:
        _check_minimal(x[key], sub, f"{where}.{key}")
  if isinstance(x, list) and isinstance(schema.get("items"), dict):
    for i, v in enumerate(x):
      _check_minimal(v, schema["items"], f"{where}[{i}]")


def validate_json(d: dict, use_jsonschema: bool = True) -> dict:
  """d checked against jaxcode/resources/graph-schema.json: with jsonschema when it is
  importable (and use_jsonschema), else with the minimal checker; ConfigError on failure."""
  schema = load_schema()
  try:
    if not use_jsonschema:
      raise ImportError
    import jsonschema
  except ImportError:
    _check_minimal(d, schema, "$")
    return d
  err = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(d))
  if err is not None:
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    raise ConfigError(f"graph JSON {where}: {err.message}")
  return d


def _write_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, allow_nan=False)
  os.replace(tmp, path)


def write_graph_json(path: str, d: dict) -> str:
  """Writes d to `path` (temporary name, then rename) and records its metadata in
  graph-metadata.json beside it ({"graphs": [metadata, ...]}, one entry per slug)."""
  validate_json(d)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  _write_atomic(path, d)
  index = os.path.join(folder, "graph-metadata.json")
  graphs = []
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      graphs = json.load(f).get("graphs", [])
  slug = d["metadata"]["slug"]
  graphs = [g for g in graphs if g.get("slug") != slug] + [d["metadata"]]
  _write_atomic(index, {"graphs": graphs})
  return path
