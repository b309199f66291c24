"""The small decoder-only LM that launch.emergence and launch.neuromfa_study train offline.

A randomly initialised GPT-2 (jaxcode.models.lm.gpt2 from a small transformers.GPT2Config,
kernels and embeddings N(0, init_std^2) as in GPT-2) trained on packed token rows through
the shared loop (jaxcode.train.loop), saving orbax checkpoints at log-spaced steps: training
runs in segments that end at those steps, so every segment resumes from the last one.

A config passed here carries the loop's fields (configs/_train.py), `model` {d_model,
n_layers, n_heads, d_mlp, init_std}, `data.seq_len`, `data.batch`, `checkpoint_steps`.
A data dict carries 'train' [N, seq_len + 1] int32 ids, 'train_mask' and 'vocab'.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxcode import parallel
from jaxcode.errors import ConfigError
from jaxcode.models.lm import gpt2, hf
from jaxcode.train import loop


def checkpoint_steps(c) -> list[int]:
  """Sorted log-spaced steps (2^k up to steps, and steps itself), or the explicit list."""
  if c.checkpoint_steps:
    steps = sorted({int(s) for s in c.checkpoint_steps})
  else:
    steps = sorted({int(2 ** k) for k in range(int(np.log2(int(c.steps))) + 1)} | {int(c.steps)})
  if steps[0] < 1 or steps[-1] != int(c.steps):
    raise ConfigError(f"checkpoint_steps={steps}: expected positive steps ending at steps={c.steps}")
  return steps


def make_module(config, vocab: int):
  import transformers
  m = config.model
  cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=int(config.data.seq_len),
                                n_embd=int(m.d_model), n_layer=int(m.n_layers),
                                n_head=int(m.n_heads), n_inner=int(m.d_mlp),
                                activation_function="gelu_new",
                                bos_token_id=None, eos_token_id=None)
  return gpt2.from_hf_config(cfg), cfg


def init_params(module, key, init_std: float):
  """GPT-2's init: kernels and embeddings N(0, init_std^2), biases 0, LayerNorms 1/0."""
  params = module.init(key, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32),
                       module.n_layers, True)["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(flat[0]))
  out = []
  for (path, x), k in zip(flat[0], keys):
    name = parallel.path_str(path)
    out.append(init_std * jax.random.normal(k, x.shape, x.dtype)
               if name.endswith(("kernel", "embedding")) else x)
  return jax.tree_util.tree_unflatten(flat[1], out)


def lm_loss(module, params, ids_BT, mask_BT):
  """Mean next-token cross entropy over positions whose target is a real token."""
  x, y = ids_BT[:, :-1], ids_BT[:, 1:]
  m = (mask_BT[:, 1:] * mask_BT[:, :-1]).astype(jnp.float32)
  logits = module.apply({"params": params}, x, mask_BT[:, :-1], module.n_layers, True)["logits"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return (ce * m).sum() / jnp.maximum(m.sum(), 1.0)


def make_task(config, module, data, tx) -> loop.Task:
  n, batch, seed = len(data["train"]), int(config.data.batch), int(config.seed)

  def host_batch(step):
    rows = np.random.default_rng([seed, int(step)]).integers(0, n, batch)
    return {"ids": data["train"][rows], "mask": data["train_mask"][rows].astype(np.int32)}

  def loss(params, aux, b, key, step):
    return lm_loss(module, params, b["ids"], b["mask"]), ({}, aux)

  meta = {"model_type": "gpt2", "vocab": data["vocab"], "d_model": module.d_model,
          "n_layers": module.n_layers}
  return loop.Task(init=lambda k: (init_params(module, k, float(config.model.init_std)), {}),
                   loss=loss, batch=host_batch, param_rules=hf.SHARDING_RULES, tx=tx,
                   meta=meta)


def train_segments(config, task, workdir, steps, mesh) -> dict[int, float]:
  """Trains to each checkpoint step in turn; returns the training loss at each step."""
  losses = {}
  for s in steps:
    seg = ml_collections.ConfigDict(config.to_dict())
    seg.steps = s
    seg.checkpoint.every = int(config.steps)
    seg.checkpoint.keep = len(steps) + 1
    seg.optim.schedule, seg.optim.warmup_steps = "constant", 0   # only validated: task.tx rules
    res = loop.train(task, seg, workdir, mesh=mesh,
                     on_metrics=lambda i, m: losses.__setitem__(i, float(m["loss"])))
    del res
  return losses


def logged_losses(workdir: str) -> dict[int, float]:
  out = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        rec = json.loads(line)
        if "loss" in rec:
          out[int(rec["step"])] = float(rec["loss"])
  return out
