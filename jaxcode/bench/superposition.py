"""Benchmark: the vmapped, jitted toy-superposition sweep against a per-instance NumPy loop.

Both run the same recipe on the `feature_geometry` sweep (ReLU output model, uniform
importance, `instances` sparsities S_k = 1 - 20^(-k / (instances - 1)), AdamW with the
notebook's settings): ours is the shared training loop's jitted step (train.loop) on
models.toy and data.sparse_features, instances sharded over every device; the NumPy
reference has hand-written gradients and steps one instance at a time, as a straightforward
port would. Printed as a ratio of steps/s measured in the same process, and the sweep's
matmul FLOP/s as a fraction of the measured float32 matmul rate.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcode import parallel
from jaxcode.bench import common
from jaxcode.data import sparse_features
from jaxcode.errors import ConfigError
from jaxcode.models import toy
from jaxcode.train import loop, optim


def sparsities(instances: int) -> list[float]:
  """The feature_geometry sweep's sparsities (configs/superposition.py), `instances` of them."""
  return [float(1.0 - 20.0 ** (-k / max(instances - 1, 1))) for k in range(instances)]


def sweep_task(n: int, m: int, batch: int, sparsity: list[float], mesh) -> loop.Task:
  """The sweep as a loop.Task: ReLU toy instances (padded to the instance axis of the mesh),
  uniform importance, the notebook's xavier-normal init std."""
  std = float(np.sqrt(2.0 / (n * m + len(sparsity) * m)))   # on the joint [L, n, m] tensor
  sparsity = sparsity + [sparsity[-1]] * (-len(sparsity) % mesh.shape[parallel.MODEL])
  num = len(sparsity)
  model = toy.ToyModel(n=n, m=m, init_std=std)
  ids = jnp.arange(num, dtype=jnp.int32)
  s_I = jnp.asarray(sparsity, jnp.float32)
  x_sharding = NamedSharding(mesh, P(parallel.MODEL, parallel.DATA, None))

  def init(key):
    return toy.init_instances(model, key, ids), {"importance": jnp.ones((num, n), jnp.float32)}

  def device_batch(key, step):
    x = sparse_features.sample_instances(key, ids, batch, n, s_I)
    return jax.lax.with_sharding_constraint(x, x_sharding)

  def loss(params, aux, x, key, step):
    per = toy.weighted_mse(model, params, x, aux["importance"], jnp.ones((num,), bool))
    return per.sum(), ({"instance_loss": per}, aux)

  rules = [(r".*", P(parallel.MODEL))]   # every leaf's leading axis is the instance axis
  return loop.Task(init=init, loss=loss, device_batch=device_batch, param_rules=rules,
                   aux_rules=rules)


def numpy_reference_steps(n, m, batch, sparsities, steps, lr=1e-3, wd=0.01, seed=0) -> float:
  """Seconds for `steps` AdamW steps of every instance, one instance after another."""
  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  b1, b2, eps = 0.9, 0.999, 1e-8
  for s in sparsities:
    w = rng.normal(0, 0.02, (n, m)).astype(np.float32)
    b = np.zeros(n, np.float32)
    mw, vw, mb, vb = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
    for t in range(1, steps + 1):
      x = np.where(rng.random((batch, n)) >= s, rng.random((batch, n)), 0.0).astype(np.float32)
      h = x @ w
      pre = h @ w.T + b
      out = np.maximum(pre, 0)
      dout = 2.0 * (out - x) / (batch * n)          # uniform importance
      dpre = dout * (pre > 0)
      gw = x.T @ (dpre @ w) + dpre.T @ h
      gb = dpre.sum(0)
      for p, g, mm, vv in ((w, gw, mw, vw), (b, gb, mb, vb)):
        mm *= b1; mm += (1 - b1) * g
        vv *= b2; vv += (1 - b2) * g * g
        mhat, vhat = mm / (1 - b1 ** t), vv / (1 - b2 ** t)
        p -= lr * (mhat / (np.sqrt(vhat) + eps) + wd * p)
  return time.perf_counter() - t0


def jax_sweep_seconds(config, s: list[float]) -> float:
  """Seconds of `config.steps` jitted sweep steps (after one compiling step)."""
  n, m, batch, steps = int(config.n), int(config.m), int(config.batch), int(config.steps)
  mesh = parallel.make_mesh(1, -1)
  task = sweep_task(n, m, batch, s, mesh)
  tx = optim.make_optimizer(config.optim, steps)
  _, shardings, make_state = loop.create_state(task, tx, 0, mesh)
  step = jax.jit(loop.make_step_fn(task, tx), in_shardings=(shardings, None),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  state, metrics = step(make_state(), None)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, None)
  jax.block_until_ready(metrics)
  return time.perf_counter() - t0


def run(config) -> dict:
  for name in ("n", "m", "instances", "batch", "steps", "reference_steps"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]!r}: expected a positive integer")
  n, m, batch, inst = int(config.n), int(config.m), int(config.batch), int(config.instances)
  s = sparsities(inst)
  jax_s = jax_sweep_seconds(config, s)
  ref_steps = int(config.reference_steps)
  ref_s = numpy_reference_steps(n, m, batch, s, ref_steps, float(config.optim.lr),
                                float(config.optim.weight_decay))
  jax_rate = int(config.steps) / jax_s       # sweep steps/s (all instances advance)
  ref_rate = ref_steps / ref_s               # sweep steps/s of the NumPy loop
  flops = inst * 6.0 * batch * n * m * 2     # fwd + bwd matmul FLOPs per sweep step
  peak = common.matmul_flops_per_s(int(config.matmul_n))
  return {"benchmark": "superposition", "device": common.device_summary(),
          "instances": inst, "n": n, "m": m, "batch": batch,
          "jax_sweep_steps_per_s": jax_rate, "numpy_sweep_steps_per_s": ref_rate,
          "speedup_vs_numpy": jax_rate / ref_rate,
          "jax_flops_per_s": jax_rate * flops,
          "matmul_f32_flops_per_s": peak,
          "jax_fraction_of_matmul_rate": jax_rate * flops / peak}
