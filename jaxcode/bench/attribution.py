"""Benchmark: attribution graphs, seconds per graph against the number of active features, and
the cost of one vector-Jacobian product against one forward.

On one model and one prompt of `n_tokens` tokens (a model alias such as gemma3-270m, or a
random Gemma-3-like model of the configured sizes), with random TopK cross-layer transcoders
over every layer (`d_sae` features per layer), for each k in `ks`:
- seconds per graph (attribution.attribute end to end: the clean forward, the encodings, the
  logit directions and every row), after an untimed graph of one batch of rows that compiles
  the same shapes; the number of
  active features (about k * n_layers * (n_tokens - 1)) and of rows;
- the rows' seconds alone, hence vector-Jacobian products (rows) per second, and their FLOP
  rate by `row_flops` (a count of the work a row needs, not of what XLA executes).
And the jitted clean forward of the same prompt (the model's own forward, every hookpoint the
graph reads): `vjp_row_over_forward` = seconds per row / seconds per forward, the cost of one
target's row in forwards (a row is a backward through the frozen attention and norms only:
no MLP, no QK; batching amortises the frozen forward each batch recomputes), and
`graph_over_forward` = seconds per graph / seconds per forward (the headline ratios; seconds per
graph and active features are kept beside them).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import attribution as attr
from jaxcode.bench import common
from jaxcode.errors import ConfigError


def random_model(config):
  """A random Gemma 3 text model of the configured sizes (no download)."""
  import transformers
  from jaxcode.models.lm.hf import PretrainedLM, build_module
  cfg = transformers.Gemma3TextConfig(
      vocab_size=int(config.vocab), hidden_size=int(config.d_model),
      intermediate_size=int(config.d_mlp), num_hidden_layers=int(config.n_layers),
      num_attention_heads=4, num_key_value_heads=1, head_dim=int(config.d_model) // 4,
      max_position_embeddings=256, sliding_window=64, query_pre_attn_scalar=64)
  module = build_module(cfg)
  ids = jnp.zeros((1, 2), jnp.int32)
  params = module.init(jax.random.key(0), ids, jnp.ones_like(ids), int(config.n_layers),
                       True)["params"]
  return PretrainedLM(cfg, None, params, module, "random-gemma3")


def load_model(config):
  if not config.model:
    return random_model(config)
  from jaxcode.pipeline import model as model_lib
  return model_lib.load(model_lib.resolve(config.model), tokenizer=False)


def random_clt(lm, d_sae: int, k: int, seed: int = 0) -> attr.Coders:
  """TopK CLT coders with random unit-scale weights over every layer."""
  rng = np.random.default_rng(seed)
  L, D = lm.n_layers, lm.d_model
  g = lambda *s: rng.standard_normal(s, dtype=np.float32)
  return attr.Coders(tuple(range(L)), "blocks.{layer}.mlp_in", "blocks.{layer}.mlp_out",
                     tuple(g(d_sae, D) / np.sqrt(D) for _ in range(L)),
                     tuple(np.abs(g(d_sae)) for _ in range(L)),
                     tuple(g(d_sae, L - l, D) * 0.05 for l in range(L)),
                     np.zeros((L, D), np.float32), "topk", None, int(k), None, "random")


def row_flops(lm, n_tokens: int, n_features: int, n_slots: int) -> float:
  """FLOPs of one row (2 per multiply-add): the backward through every layer's value and
  output projections and the frozen pattern (H heads x T x T x head dim), then the
  contraction with the active features' decoder rows (every output slot) and the errors."""
  blk = next(v for k, v in lm.params.items() if k.endswith("_0") and isinstance(v, dict))
  vo = sum(int(np.prod(blk[n]["kernel"].shape)) for n in ("v", "o") if n in blk)
  width = int(blk["o"]["kernel"].shape[0]) if "o" in blk else lm.d_model
  T, L, D = n_tokens, lm.n_layers, lm.d_model
  return float(2 * L * T * vo + 2 * L * T * T * width + 2 * n_features * n_slots * D
               + 2 * L * T * D)


def _forward_seconds(lm, ids, repeats: int) -> float:
  fn = jax.jit(lambda p, i: lm.module.apply({"params": p}, i[None], jnp.ones((1, i.size),
                                                                              jnp.int32),
                                            lm.n_layers, True))
  return common.time_fn(lambda: common.block(fn(lm.params, jnp.asarray(ids))), repeats)


def _graph(lm, coders, ids, config, max_feature_nodes=None) -> dict:
  t0 = time.perf_counter()
  g = attr.attribute(lm, coders, ids=ids, batch_size=int(config.batch_size),
                     max_n_logits=int(config.max_n_logits), max_feature_nodes=max_feature_nodes)
  wall = time.perf_counter() - t0
  m = g.metadata
  return {"seconds_graph": wall, "seconds_rows": m["seconds_rows"],
          "seconds_setup": m["seconds_setup"], "n_active_features": m["n_active_features"],
          "n_rows": m["n_vjp"], "rows_per_s": m["n_vjp"] / max(m["seconds_rows"], 1e-12)}


def run(config) -> dict:
  """The measurements of the module docstring (configs/bench/attribution.py)."""
  ks = [int(k) for k in config.ks]
  if not ks or min(ks) < 1 or max(ks) > int(config.d_sae):
    raise ConfigError(f"ks={tuple(config.ks)}: expected values in [1, d_sae={config.d_sae}]")
  lm = load_model(config)
  rng = np.random.default_rng(1)
  ids = rng.integers(3, min(lm.module.vocab, 30000), int(config.n_tokens)).astype(np.int32)
  ids[0] = 2
  fwd = _forward_seconds(lm, ids, int(config.repeats))
  out = {"device": common.device_summary(), "model": config.model or "random-gemma3",
         "n_layers": lm.n_layers, "d_model": lm.d_model, "n_tokens": int(config.n_tokens),
         "d_sae": int(config.d_sae), "batch_size": int(config.batch_size),
         "seconds_forward": fwd, "per_k": {}}
  for k in ks:
    coders = random_clt(lm, int(config.d_sae), k)
    _graph(lm, coders, ids, config, int(config.batch_size))   # compiles (same shapes, 1 batch)
    best = min((_graph(lm, coders, ids, config) for _ in range(int(config.repeats))),
               key=lambda r: r["seconds_graph"])
    best["vjp_row_over_forward"] = best["seconds_rows"] / best["n_rows"] / fwd
    best["row_flops_per_s"] = best["rows_per_s"] * row_flops(
        lm, ids.size, best["n_active_features"], lm.n_layers)
    out["per_k"][str(k)] = best
  last = out["per_k"][str(ks[-1])]
  out["vjp_row_over_forward"] = last["vjp_row_over_forward"]
  out["graph_over_forward"] = last["seconds_graph"] / fwd
  out["seconds_per_graph"] = last["seconds_graph"]
  out["active_features"] = last["n_active_features"]
  out["row_flops_per_s"] = last["row_flops_per_s"]
  return out
