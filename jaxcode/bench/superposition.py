"""Benchmark: the vmapped, jitted toy-superposition sweep against a per-instance NumPy loop.

Both run the same recipe (ReLU output model, importance-weighted MSE, AdamW with the
notebook's settings) on the `feature_geometry` sweep; the NumPy reference has
hand-written gradients and steps one instance at a time, as a straightforward port
would. Printed as a ratio of steps/s measured in the same process.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxcode import parallel
from jaxcode.bench import common
from jaxcode.experiments import superposition as exp
from jaxcode.train import loop, optim


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


def run(config) -> dict:
  from configs import superposition as configs
  c = configs.get_config("feature_geometry")
  c.toy.batch = int(config.batch)
  mesh = parallel.make_mesh(1, -1)
  inst = exp.build_instances(c.toy, pad_to=mesh.shape["model"])
  task = exp.make_task(c, inst, mesh)
  tx = optim.make_optimizer(c.optim, int(config.steps))
  _, shardings, make_state = loop.create_state(task, tx, 0, mesh)
  step = jax.jit(loop.make_step_fn(task, tx), in_shardings=(shardings, None),
                 out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)
  state = make_state()
  state, m = step(state, None)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(int(config.steps)):
    state, m = step(state, None)
  jax.block_until_ready(m)
  jax_s = time.perf_counter() - t0
  ref_steps = int(config.reference_steps)
  ref_s = numpy_reference_steps(int(c.toy.n), int(c.toy.m), int(config.batch),
                                [float(s) for s in c.toy.sparsities], ref_steps)
  jax_rate = config.steps / jax_s            # sweep steps/s (all instances advance)
  ref_rate = ref_steps / ref_s               # sweep steps/s of the NumPy loop
  flops = 20 * 6.0 * config.batch * c.toy.n * c.toy.m * 2   # fwd+bwd matmul FLOPs / sweep step
  peak = common.matmul_flops_per_s(1024)
  return {"benchmark": "superposition", "device": common.device_summary(),
          "instances": len(c.toy.sparsities), "n": c.toy.n, "m": c.toy.m, "batch": config.batch,
          "jax_sweep_steps_per_s": jax_rate, "numpy_sweep_steps_per_s": ref_rate,
          "speedup_vs_numpy": jax_rate / ref_rate,
          "matmul_f32_flops_per_s": peak,
          "jax_fraction_of_matmul_rate": jax_rate * flops / peak}
