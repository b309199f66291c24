"""SAE training-step benchmark (configs/bench/sae.py; python -m launch.benchmark).

(a) dense ReLU SAE step: achieved FLOP/s, counting 10 B d_in d_sae per step (encoder and decoder
    forward, decoder weight/input and encoder weight gradients; the input needs none), as a
    fraction of the float32 matmul rate measured in the same run;
(b) TopK step time over the dense ReLU step time at the same sizes (dense decode and the sparse
    gather-and-sum path), and which TopK path is faster here;
(c) tokens/s of a sweep of S SAEs trained at once (vmapped, one batch feed) against the same S
    trained one after another (each step feeding its own batch from the same in-memory source).

Every number is a ratio of times measured in this run on this device.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode.bench import common
from jaxcode.data.sources import ArraySource
from jaxcode.models import sae


def _trainer(cfg: sae.SAEConfig, x_sample):
  params, aux = sae.make_init(cfg, x_sample)(jax.random.key(0))
  tx = optax.adam(1e-4)
  loss = sae.make_loss(cfg)
  post = sae.post_update(cfg)

  def step(params, opt, aux, x, s):
    (l, (m, aux)), g = jax.value_and_grad(loss, has_aux=True)(params, aux, x, None, s)
    u, opt = tx.update(g, opt, params)
    return post(optax.apply_updates(params, u), aux), opt, aux, l

  return [params, tx.init(params), aux], jax.jit(step, donate_argnums=(0, 1, 2))


def _time_steps(state, step, feed, repeats: int, warmup: int = 2) -> float:
  """Median seconds per step (feed() included), the state threaded through donation."""
  times = []
  for i in range(warmup + repeats):
    t0 = time.perf_counter()
    x = feed(i)
    p, o, a, l = step(*state, x, i)
    jax.block_until_ready(l)
    state[:] = [p, o, a]
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run(bc) -> dict:
  d, m, b, k = int(bc.d_in), int(bc.d_sae), int(bc.batch), int(bc.k)
  rng = np.random.default_rng(0)
  data = rng.standard_normal((int(bc.source_rows), d)).astype(np.float32)
  src = ArraySource(data, seed=0)
  sample = data[:1024]
  on_device = jnp.asarray(src.batch(0, b))
  fixed = lambda i: on_device
  rate = common.matmul_flops_per_s(int(bc.matmul_n), repeats=int(bc.repeats))
  out = {"device": common.device_summary(), "d_in": d, "d_sae": m, "batch": b, "k": k,
         "matmul_flops_per_s": rate}

  relu = sae.SAEConfig(architecture="relu", d_in=d, d_sae=m, sparsity_coef=1e-3)
  state, step = _trainer(relu, sample)
  t_dense = _time_steps(state, step, fixed, int(bc.repeats))
  del state
  flops = 10.0 * b * d * m
  out.update(dense_step_s=t_dense, dense_flops_per_s=flops / t_dense,
             dense_fraction_of_matmul=flops / t_dense / rate)

  for sparse in (False, True):
    cfg = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=k, sparse_decode=sparse)
    state, step = _trainer(cfg, sample)
    t = _time_steps(state, step, fixed, int(bc.repeats))
    del state
    name = "sparse" if sparse else "dense"
    out[f"topk_{name}_step_s"] = t
    out[f"topk_{name}_over_dense_relu"] = t / t_dense
  out["topk_faster_path"] = ("sparse" if out["topk_sparse_step_s"] < out["topk_dense_step_s"]
                             else "dense")

  n = int(bc.sweep)
  ks = tuple(int(k * 2 ** (i - 1)) for i in range(n))         # e.g. 16, 32, 64, 128
  feed = lambda i: jnp.asarray(src.batch(i, b))
  sweep = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=ks,
                        sparse_decode=out["topk_faster_path"] == "sparse")
  state, step = _trainer(sweep, sample)
  t_vmapped = _time_steps(state, step, feed, int(bc.repeats))
  del state
  t_seq = 0.0
  for kk in ks:
    cfg = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=kk,
                        sparse_decode=sweep.sparse_decode)
    state, step = _trainer(cfg, sample)
    t_seq += _time_steps(state, step, feed, int(bc.repeats))
    del state
  out.update(sweep_ks=list(ks), sweep_vmapped_tokens_per_s=b / t_vmapped,
             sweep_sequential_tokens_per_s=b / t_seq, sweep_speedup=t_seq / t_vmapped)
  return out
