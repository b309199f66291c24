"""SAE training-step benchmark (configs/bench/sae.py; python -m launch.benchmark).

(a) dense ReLU SAE step: achieved FLOP/s, counting 10 B d_in d_sae per step (encoder and decoder
    forward, decoder weight/input and encoder weight gradients; the input needs none), as a
    fraction of the float32 matmul rate measured in the same run;
(b) TopK step time over the dense ReLU step time at the same sizes (dense decode and the sparse
    gather-and-sum path), and which TopK path is faster here;
(c) tokens/s of a sweep of S SAEs trained at once (vmapped, one batch feed) against the same S
    trained one after another (each step feeding its own batch from the same in-memory source):
    a TopK sweep of k (k/2 .. 4k; the vmapped top-k runs at the largest k for all, masked) and a
    ReLU sweep of the L1 coefficient (equal work per SAE).

Every number is a ratio of times measured in this run on this device.  Times are the fastest of
the repeats (least disturbed on a shared machine); on a CPU the ratios are also given by process
CPU time, which other processes on the machine do not inflate.
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


def _timed(fn):
  """(wall seconds, process CPU seconds) of fn() with its result blocked on."""
  t0, c0 = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0, time.process_time() - c0


def _best(samples):
  """Fastest wall time and the CPU time of the same sample: on a shared machine the fastest
  repeat is the one least disturbed by other processes."""
  wall, cpu = min(samples)
  return wall, cpu


def _time_steps(state, step, feed, repeats: int, warmup: int = 2):
  """(wall, cpu) seconds per step (feed() included), the state threaded through donation."""
  samples = []
  for i in range(warmup + repeats):
    box = {}

    def one():
      p, o, a, l = step(*state, feed(i), i)
      box["s"] = [p, o, a]
      return l

    t = _timed(one)
    state[:] = box["s"]
    if i >= warmup:
      samples.append(t)
  return _best(samples)


def _matmul_rate(n: int, repeats: int):
  """(FLOP/s by wall time, FLOP/s by process CPU time) of an n^3 float32 matmul."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32)
  b = jax.random.normal(k2, (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  wall, cpu = _best([_timed(lambda: f(a, b)) for _ in range(repeats)])
  return 2.0 * n ** 3 / wall, 2.0 * n ** 3 / max(cpu, 1e-9)


def run(bc) -> dict:
  d, m, b, k = int(bc.d_in), int(bc.d_sae), int(bc.batch), int(bc.k)
  rng = np.random.default_rng(0)
  data = rng.standard_normal((int(bc.source_rows), d)).astype(np.float32)
  src = ArraySource(data, seed=0)
  sample = data[:1024]
  on_device = jnp.asarray(src.batch(0, b))
  fixed = lambda i: on_device
  rate, rate_cpu = _matmul_rate(int(bc.matmul_n), int(bc.repeats))
  out = {"device": common.device_summary(), "d_in": d, "d_sae": m, "batch": b, "k": k,
         "matmul_flops_per_s": rate, "matmul_flops_per_cpu_s": rate_cpu}

  relu = sae.SAEConfig(architecture="relu", d_in=d, d_sae=m, sparsity_coef=1e-3)
  state, step = _trainer(relu, sample)
  t_dense, c_dense = _time_steps(state, step, fixed, int(bc.repeats))
  del state
  flops = 10.0 * b * d * m
  out.update(dense_step_s=t_dense, dense_flops_per_s=flops / t_dense,
             dense_fraction_of_matmul=flops / t_dense / rate,
             dense_step_cpu_s=c_dense,
             dense_fraction_of_matmul_by_cpu_time=flops / max(c_dense, 1e-9) / rate_cpu)

  for sparse in (False, True):
    cfg = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=k, sparse_decode=sparse)
    state, step = _trainer(cfg, sample)
    t, c = _time_steps(state, step, fixed, int(bc.repeats))
    del state
    name = "sparse" if sparse else "dense"
    out[f"topk_{name}_step_s"] = t
    out[f"topk_{name}_over_dense_relu"] = t / t_dense
    out[f"topk_{name}_over_dense_relu_by_cpu_time"] = c / max(c_dense, 1e-9)
  out["topk_faster_path"] = ("sparse" if out["topk_sparse_step_s"] < out["topk_dense_step_s"]
                             else "dense")

  n = int(bc.sweep)
  ks = tuple(int(k * 2 ** (i - 1)) for i in range(n))         # e.g. 16, 32, 64, 128
  feed = lambda i: jnp.asarray(src.batch(i, b))
  sweep = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=ks,
                        sparse_decode=out["topk_faster_path"] == "sparse")
  state, step = _trainer(sweep, sample)
  t_vmapped = _time_steps(state, step, feed, int(bc.repeats))[0]
  del state
  t_seq = 0.0
  for kk in ks:
    cfg = sae.SAEConfig(architecture="topk", d_in=d, d_sae=m, k=kk,
                        sparse_decode=sweep.sparse_decode)
    state, step = _trainer(cfg, sample)
    t_seq += _time_steps(state, step, feed, int(bc.repeats))[0]
    del state
  out.update(sweep_ks=list(ks), sweep_vmapped_tokens_per_s=b / t_vmapped,
             sweep_sequential_tokens_per_s=b / t_seq, sweep_speedup=t_seq / t_vmapped)

  # The same comparison for a sweep of the L1 coefficient (ReLU): equal work per SAE.
  coefs = tuple(float(1e-3 * 2 ** i) for i in range(n))
  state, step = _trainer(sae.SAEConfig(architecture="relu", d_in=d, d_sae=m, sparsity_coef=coefs),
                         sample)
  t_vmapped = _time_steps(state, step, feed, int(bc.repeats))[0]
  del state
  t_seq = 0.0
  for c in coefs:
    state, step = _trainer(sae.SAEConfig(architecture="relu", d_in=d, d_sae=m, sparsity_coef=c),
                           sample)
    t_seq += _time_steps(state, step, feed, int(bc.repeats))[0]
    del state
  out.update(relu_sweep_vmapped_tokens_per_s=b / t_vmapped,
             relu_sweep_sequential_tokens_per_s=b / t_seq, relu_sweep_speedup=t_seq / t_vmapped)
  return out
