"""A planted two-step circuit through attention: the graph must find it as the top path.

The model (GPT-2 layout, ReLU MLPs, one head, width 16) is written here by hand. In a basis of
orthonormal zero-mean directions (so LayerNorm's centring is the identity on them) e_0..e_11
(tokens), r:
  layer 0  attention off; MLP neuron 0 fires on token A (reads e_A) and writes r;
           neuron 1 fires on token C and writes a little of e_Z (a weaker, direct path)
  layer 1  attention uniform over the past (q = k = 0), value/output copying the r channel;
           MLP neuron 0 reads r and writes e_Z
  logits   tied to the embeddings, so writing e_Z raises logit Z.
Prompt: BOS, x, A, x, x, C. Planted path: token A (pos 2) -> layer-0 neuron 0 at pos 2 ->
(attention) -> layer-1 neuron 0 at the last position -> logit Z. The transcoders are the
MLPs themselves (encoder = c_fc, decoder = c_proj), so errors are zero: the ground truth is
the construction, not the code under test.
"""

import numpy as np
import pytest
import transformers

from jaxcode.analysis import attribution as attr
from jaxcode.models.lm.hf import PretrainedLM, build_module
from jaxcode.models.sae_io import ExternalSAE

D, V, A_TOK, C_TOK, Z_TOK, X_TOK = 16, 12, 5, 8, 3, 7
IDS = np.array([0, X_TOK, A_TOK, X_TOK, X_TOK, C_TOK], np.int32)


def _basis(rng):
  m = rng.normal(size=(D, D))
  m -= m.mean(0, keepdims=True)                 # columns orthogonal to the all-ones vector
  q, _ = np.linalg.qr(m)
  return q[:, :V + 1].T.astype(np.float32)       # rows e_0..e_11, r


def planted_lm():
  cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=D, n_layer=2, n_head=1,
                                n_inner=4, activation_function="relu",
                                bos_token_id=0, eos_token_id=0)
  module = build_module(cfg)
  import jax
  import jax.numpy as jnp
  params = jax.tree.map(np.zeros_like, module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32),
                                                   jnp.ones((1, 2), jnp.int32), 2, True)["params"])
  params = jax.tree.map(np.array, params)
  E = _basis(np.random.default_rng(0))
  e, r = E[:V], E[V]
  params["wte"]["embedding"][:] = 3 * e
  for i in (0, 1):
    for ln in ("ln_1", "ln_2", "ln_f"):
      (params[f"h_{i}"] if ln != "ln_f" else params)[ln]["scale"][:] = 1.0
  m0, m1 = params["h_0"], params["h_1"]
  m0["c_fc"]["kernel"][:, 0], m0["c_fc"]["bias"][0] = e[A_TOK], -0.5
  m0["c_proj_mlp"]["kernel"][0] = 3 * r
  m0["c_fc"]["kernel"][:, 1], m0["c_fc"]["bias"][1] = e[C_TOK], -0.5
  m0["c_proj_mlp"]["kernel"][1] = 0.3 * e[Z_TOK]
  m1["v"]["kernel"][:] = np.outer(r, r)
  m1["c_proj_attn"]["kernel"][:] = np.outer(r, r)
  m1["c_fc"]["kernel"][:, 0], m1["c_fc"]["bias"][0] = r, -0.05
  m1["c_proj_mlp"]["kernel"][0] = 3 * e[Z_TOK]
  lm = PretrainedLM(cfg, None, jax.tree.map(jnp.asarray, params), module, "planted")
  return lm


def exact_transcoders(lm):
  p = lm.params
  return {i: ExternalSAE("standard", np.asarray(p[f"h_{i}"]["c_fc"]["kernel"]),
                         np.asarray(p[f"h_{i}"]["c_fc"]["bias"]),
                         np.asarray(p[f"h_{i}"]["c_proj_mlp"]["kernel"]),
                         np.asarray(p[f"h_{i}"]["c_proj_mlp"]["bias"]), kind="transcoder")
          for i in range(2)}


@pytest.fixture(scope="module")
def planted():
  lm = planted_lm()
  return lm, attr.attribute(lm, exact_transcoders(lm), ids=IDS, batch_size=8, max_n_logits=1,
                            target_tokens=[Z_TOK])


def test_the_planted_model_computes_what_it_should(planted):
  lm, graph = planted
  logits = np.asarray(lm.apply(IDS[None], None, ["logits"])["logits"][0, -1])
  assert np.argmax(logits) == Z_TOK
  assert graph.logit_tokens[0] == Z_TOK
  # exact transcoders: the error nodes carry nothing
  n_f, T = len(graph.features), IDS.size
  assert np.abs(graph.adjacency[:, n_f:n_f + 2 * T]).max() < 1e-4 * np.abs(graph.adjacency).max()


def test_top_path_is_the_planted_one(planted):
  _, graph = planted
  (score, path), *rest = attr.top_paths(graph, k=3)
  labels = [attr.node_label(graph, i) for i in path]
  n_f, T = len(graph.features), IDS.size
  feats = {tuple(f): i for i, f in enumerate(graph.features)}
  want = [n_f + 2 * T + 2, feats[(0, 2, 0)], feats[(1, T - 1, 0)], graph.adjacency.shape[0] - 1]
  assert path == want, labels
  # the runner-up is the weaker direct path: token C -> layer-0 neuron 1 -> logit Z
  assert rest and rest[0][1] == [n_f + 2 * T + T - 1, feats[(0, T - 1, 1)], want[-1]]
  assert score > rest[0][0]


def test_paths_from_tokens_skip_error_nodes(planted):
  _, graph = planted
  paths = attr.top_paths(graph, k=2, errors=False)
  n_f, T = len(graph.features), IDS.size
  assert all(p[0] >= n_f + 2 * T for _, p in paths)        # every path starts at a token
  assert paths[0][1] == attr.top_paths(graph, k=1)[0][1]    # exact transcoders: same top path
