"""SAE training-step benchmark (configs/bench/sae.py; python -m launch.benchmark).

(a) dense ReLU SAE step: achieved FLOP/s, counting 10 B d_in d_sae per step (encoder and decoder
    forward, decoder weight/input and encoder weight gradients; the input needs none), as a
    fraction of the float32 matmul rate measured in the same run;
(b) TopK step time over the dense ReLU step time at the same sizes (dense decode and the sparse
    gather-and-sum path), and which TopK path is faster here;
(c) tokens/s of a sweep of S SAEs trained at once (one batch feed; vmapped or unrolled as
    sae.unrolled_sweep decides, reported as `mode`) against the same S
    trained one after another (each run feeding its own batches), for a TopK sweep of k
    (k/2 .. 4k; the vmapped top-k runs at the largest k for all, masked) and a ReLU sweep of
    the L1 coefficient (equal work per SAE), each fed (i) from an in-memory array (the SAE
    step alone) and (ii) from a language model computing the activations on the fly
    (LMSource; GPT-2 small architecture with random weights, which costs what the real
    checkpoint costs), at each hookpoint of `lm_hookpoints`: what a sweep shares is the
    activations, and this is what it saves.

The SAEs are configs/sae.py's (the benchmark config's `sae` block) with the sizes above set.
Every number is a ratio of times measured in this run on this device.  Times are the fastest of
the repeats (least disturbed on a shared machine); on a CPU the ratios are also given by process
CPU time, which other processes on the machine do not inflate.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode.bench import common
from jaxcode.data.sources import ArraySource, LMSource
from jaxcode.models import sae
from jaxcode.pipeline import sae as sae_stage


def _trainer(cfg: sae.SAEConfig, x_sample_ND):
  """([params, opt_state, aux], the jitted donated step) of a plain Adam SAE step."""
  params, aux = sae.make_init(cfg, x_sample_ND)(jax.random.key(0))
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


def sae_config(bc, d_in: int, **fields) -> sae.SAEConfig:
  """An SAEConfig from the benchmark config's `sae` block (configs/sae.py's, the one SAE
  schema) with `fields` set (architecture, d_sae, k, sparsity_coef, sparse_decode ...)."""
  from ml_collections import ConfigDict
  block = ConfigDict({"sae": bc.sae.to_dict()}, type_safe=False)
  sweep = {"sweep_k": (), "sweep_coef": ()}
  for name, value in fields.items():
    if isinstance(value, tuple):
      sweep["sweep_k" if name == "k" else "sweep_coef"] = value
      value = value[0]
    block.sae[name] = value
  block.sae.update(sweep)
  return sae_stage.sae_config(block, d_in)


def run(bc) -> dict:
  """Every measurement of the module docstring; returns the ratios (and the times)."""
  d, m, b = int(bc.d_in), int(bc.d_sae), int(bc.batch)
  data_ND = np.random.default_rng(0).standard_normal((int(bc.source_rows), d)).astype(np.float32)
  src = ArraySource(data_ND, seed=0)
  sample_ND = data_ND[:1024]
  rate, rate_cpu = _matmul_rate(int(bc.matmul_n), int(bc.repeats))
  out = {"device": common.device_summary(), "d_in": d, "d_sae": m, "batch": b, "k": int(bc.k),
         "matmul_flops_per_s": rate, "matmul_flops_per_cpu_s": rate_cpu}
  _dense_and_topk_steps(bc, out, sample_ND, jnp.asarray(src.batch(0, b)))
  lm = _random_lm(bc.lm_model) if bc.lm_hookpoints else None
  _sweeps(bc, out, sample_ND, _feeds(bc, src, lm))
  if lm is not None:
    ids_BT = np.zeros((-(-b // int(bc.lm_seq)), int(bc.lm_seq)), np.int32)
    fn = lambda: lm.apply(ids_BT, None, (bc.lm_hookpoints[-1],))
    _timed(fn)
    out["lm_forward_s_per_batch"] = min(_timed(fn)[0] for _ in range(2))
  return out


def _dense_and_topk_steps(bc, out: dict, sample_ND, x_BD) -> None:
  """(a) the dense ReLU step against the matmul rate, (b) TopK (dense and sparse decode)
  against it; adds them to `out`."""
  d, m, b = int(bc.d_in), int(bc.d_sae), int(bc.batch)
  fixed = lambda i: x_BD
  relu = sae_config(bc, d, architecture="relu", d_sae=m, sparsity_coef=1e-3)
  state, step = _trainer(relu, sample_ND)
  t_dense, c_dense = _time_steps(state, step, fixed, int(bc.repeats))
  del state
  flops = 10.0 * b * d * m
  rate, rate_cpu = out["matmul_flops_per_s"], out["matmul_flops_per_cpu_s"]
  out.update(dense_step_s=t_dense, dense_flops_per_s=flops / t_dense,
             dense_fraction_of_matmul=flops / t_dense / rate,
             dense_step_cpu_s=c_dense,
             dense_fraction_of_matmul_by_cpu_time=flops / max(c_dense, 1e-9) / rate_cpu)
  for sparse in (False, True):
    cfg = sae_config(bc, d, architecture="topk", d_sae=m, k=int(bc.k), sparse_decode=sparse)
    state, step = _trainer(cfg, sample_ND)
    t, c = _time_steps(state, step, fixed, int(bc.repeats))
    del state
    name = "sparse" if sparse else "dense"
    out[f"topk_{name}_step_s"] = t
    out[f"topk_{name}_over_dense_relu"] = t / t_dense
    out[f"topk_{name}_over_dense_relu_by_cpu_time"] = c / max(c_dense, 1e-9)
  out["topk_faster_path"] = ("sparse" if out["topk_sparse_step_s"] < out["topk_dense_step_s"]
                             else "dense")


def _feeds(bc, src, lm) -> dict:
  """Batch feeds of the sweep comparison: the in-memory source and, per LM hookpoint, the
  LM computing activations on the fly."""
  b, d = int(bc.batch), int(bc.d_in)
  feeds = {"memory": lambda i: jnp.asarray(src.batch(i, b))}
  for h in bc.lm_hookpoints:
    if lm.hookpoint_width(h) != d:
      raise ValueError(f"lm_hookpoints {h!r} has width {lm.hookpoint_width(h)}, not d_in={d}")
    ids_NT = np.random.default_rng(1).integers(0, lm.module.vocab,
                                               (int(bc.lm_rows), int(bc.lm_seq)))
    lm_src = LMSource(lm, ids_NT, None, h, seed=0)
    feeds[f"lm:{h}"] = (lambda s_: lambda i: jnp.asarray(s_.batch(i, b)))(lm_src)
  return feeds


def _sweeps(bc, out: dict, sample_ND, feeds: dict) -> None:
  """(c) a TopK sweep of k and a ReLU sweep of the coefficient, trained at once against one
  after another, from each feed; adds out['sweeps']."""
  d, m, b, k, n = int(bc.d_in), int(bc.d_sae), int(bc.batch), int(bc.k), int(bc.sweep)
  ks = tuple(int(k * 2 ** (i - 1)) for i in range(n))         # e.g. 16, 32, 64, 128
  coefs = tuple(float(1e-3 * 2 ** i) for i in range(n))
  sparse = out["topk_faster_path"] == "sparse"
  topk = lambda kk: sae_config(bc, d, architecture="topk", d_sae=m, k=kk, sparse_decode=sparse)
  relu = lambda c: sae_config(bc, d, architecture="relu", d_sae=m, sparsity_coef=c)
  sweeps = {"topk_k": (topk(ks), [topk(kk) for kk in ks]),
            "relu_coef": (relu(coefs), [relu(c) for c in coefs])}
  out["sweep_ks"], out["sweep_coefs"], out["sweeps"] = list(ks), list(coefs), {}
  for fname, feed in feeds.items():
    reps = int(bc.repeats) if fname == "memory" else int(bc.lm_repeats)
    for sname, (together, apart) in sweeps.items():
      state, step = _trainer(together, sample_ND)
      t_vm = _time_steps(state, step, feed, reps, warmup=1)[0]
      del state
      t_seq = 0.0
      for c in apart:
        state, step = _trainer(c, sample_ND)
        t_seq += _time_steps(state, step, feed, reps, warmup=1)[0]
        del state
      out["sweeps"][f"{sname}/{fname}"] = dict(
          at_once_tokens_per_s=b / t_vm, one_after_another_tokens_per_s=b / t_seq,
          speedup=t_seq / t_vm, mode="unroll" if sae.unrolled_sweep(together) else "vmap")
      print(f"sweep {sname} fed from {fname}: {t_seq / t_vm:.2f}x "
            f"({b / t_vm:.0f} vs {b / t_seq:.0f} tokens/s)", file=sys.stderr, flush=True)


def _random_lm(name: str):
  """A GPT-2 architecture of HF's default config (GPT-2 small: 12 x 768) with random weights:
  the forward costs what the real checkpoint's does, and needs no download."""
  import transformers
  from jaxcode.models.lm import hf
  if name != "gpt2-small-random":
    raise ValueError(f"lm_model={name!r}: expected 'gpt2-small-random'")
  cfg = transformers.GPT2Config()
  module = hf.build_module(cfg)
  init = lambda k: module.init(k, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32),
                               module.n_layers, True)["params"]
  params = jax.jit(init)(jax.random.key(0))
  return hf.PretrainedLM(config=cfg, tokenizer=None, params=params, module=module,
                         model_dir=name)
