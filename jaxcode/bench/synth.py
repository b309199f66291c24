"""Synthetic-benchmark feed benchmark (configs/bench/synth.py; python -m launch.benchmark).

Does the SynthSAEBench-style generator (jaxcode.data.synth_features) dominate training?  At
one scale, with a TopK SAE (configs/sae.py's block, sizes from the config), per step:
(a) the SAE step alone, fed one fixed batch already on the device;
(b) the generator alone (h and the ground-truth codes of one batch, jitted);
(c) generator + SAE step, the batch drawn on the device as a pure function of the step;
(d) the host-fed path of the experiment's SAE stage: draw, copy to the host, copy back, step.
Reported as tokens/s and as ratios to (a) measured in this run: `gen_plus_step_over_step`
(c / a: the cost of feeding from the generator; 1 means free), `generator_over_step`
(b / a) and `host_fed_over_step` (d / a).  Times are the fastest of the repeats; on a CPU the
ratios are also given by process CPU time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.bench import common
from jaxcode.bench.sae import _best, _time_steps, _timed, _trainer, sae_config
from jaxcode.data import synth_features as sf


def run(bc) -> dict:
  spec = sf.spec_from_config(bc.synth)
  b, reps = int(bc.batch), int(bc.repeats)
  source = sf.SynthSource(spec, seed=0)
  draw = jax.jit(lambda k: sf.sample(spec, source.params, k, b))
  cfg = sae_config(bc, spec.d_hidden, architecture="topk", d_sae=int(bc.width), k=int(bc.k))
  sample = source.sample(4096, 0)
  x_BD = jnp.asarray(source.batch(0, b))
  feeds = {"step": lambda i: x_BD,
           "gen_plus_step": lambda i: draw(sf.batch_key(0, i))[0],
           "host_fed": lambda i: jnp.asarray(source.batch(i, b))}
  out = {"device": common.device_summary(), "variant": bc.variant, "batch": b, "k": int(bc.k),
         "n_features": spec.n_features, "d_hidden": spec.d_hidden, "width": int(bc.width),
         "sparse_decode": bool(cfg.sparse_decode)}
  times = {}
  for name, feed in feeds.items():
    state, step = _trainer(cfg, sample)
    times[name] = _time_steps(state, step, feed, reps)
    del state
  jax.block_until_ready(draw(sf.batch_key(0, 0)))
  times["generator"] = _best([_timed(lambda i=i: draw(sf.batch_key(0, i))) for i in range(reps)])
  wall0, cpu0 = times["step"]
  for name, (wall, cpu) in times.items():
    out[f"{name}_tokens_per_s"] = b / wall
    if name != "step":
      out[f"{name}_over_step"] = wall / wall0
      out[f"{name}_over_step_by_cpu_time"] = cpu / max(cpu0, 1e-9)
  out["true_l0"] = float(np.mean(np.sum(np.asarray(draw(sf.batch_key(0, 0))[1]) > 0, -1)))
  return out


def summary(r: dict) -> str:
  return (f"synth feed ({r['variant']}: {r['n_features']} features, d {r['d_hidden']}, width "
          f"{r['width']}, batch {r['batch']}) on {r['device']}: generator + step / step "
          f"{r['gen_plus_step_over_step']:.2f}x, generator / step "
          f"{r['generator_over_step']:.2f}x, host-fed / step {r['host_fed_over_step']:.2f}x; "
          f"tokens/s step {r['step_tokens_per_s']:.0f}, generator + step "
          f"{r['gen_plus_step_tokens_per_s']:.0f}")
