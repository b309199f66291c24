"""Train one SAE or a vmapped sweep of SAEs on an activation source, evaluate, export.

run(config, workdir) writes workdir/{config.json, metrics.jsonl, checkpoints/, results.json,
figures/*.png, export/<name>/{cfg.json, sae_weights.safetensors}}; rerunning resumes from the
last checkpoint (parameters, Adam state, dead-latent counters, BatchTopK threshold EMA and the
normalisation scalar all live in the train state; the data position is the step).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode import parallel
from jaxcode.analysis import sae_eval
from jaxcode.data import sources
from jaxcode.data.synthetic import mean_max_cosine
from jaxcode import workdir as workdir_lib
from jaxcode.models import sae as sae_lib
from jaxcode.models import sae_io
from jaxcode.errors import ConfigError
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop, optim

SAE_FIELDS = ("jump_bandwidth", "jump_threshold_init", "tanh_c", "pre_act_coef", "threshold_ema",
              "threshold_ema_start", "dec_init_norm", "b_dec_init", "normalisation",
              "sparse_decode", "sweep_mode", "aux_alpha", "dead_tokens", "sparsity_warmup_steps")


def sae_config(config, d_in: int) -> sae_lib.SAEConfig:
  """The SAEConfig of config.sae (sweep_k / sweep_coef, when set, make a vmapped sweep)."""
  s = config.sae
  k = tuple(int(v) for v in s.sweep_k) if s.sweep_k else int(s.k)
  coef = tuple(float(v) for v in s.sweep_coef) if s.sweep_coef else float(s.sparsity_coef)
  kw = {f: s[f] for f in SAE_FIELDS}
  return sae_lib.SAEConfig(
      architecture=s.architecture, d_in=int(d_in), d_sae=int(s.d_sae), k=k, sparsity_coef=coef,
      k_aux=(int(s.k_aux) if int(s.k_aux) > 0 else None),
      matryoshka_widths=tuple(int(w) for w in s.matryoshka_widths), **kw)


def validate_settings(config, where: str = "") -> None:
  """The checks of the config alone (no data, no devices, no files), also run by the
  experiments that embed this config (`where`='sae_train.' names their fields) before
  their own compute."""
  try:
    if config.sae.architecture not in sae_lib.ARCHITECTURES:
      raise ConfigError(f"sae.architecture={config.sae.architecture!r}: expected one of "
                        f"{sae_lib.ARCHITECTURES}")
    loop.validate_train_config(config)
    for name, value, low in (("batch_size", config.batch_size, 1),
                             ("norm_sample_tokens", config.norm_sample_tokens, 1),
                             ("eval.tokens", config.eval.tokens, 2),
                             ("eval.batch_size", config.eval.batch_size, 1)):
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}"
                          + (" (the explained variance needs two tokens)" if low == 2 else ""))
  except ConfigError as e:
    raise ConfigError(f"{where}{e}") from None


def validate(config, workdir: str):
  """Everything checkable before compute: returns (source, SAEConfig)."""
  validate_settings(config)
  src = sources.from_config(config.data)
  if int(config.sae.d_in) > 0 and int(config.sae.d_in) != src.d_in:
    raise ConfigError(f"sae.d_in={config.sae.d_in} does not match the data's d_in={src.d_in}")
  cfg = sae_config(config, src.d_in)
  data, model = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                            jax.device_count())
  if cfg.d_sae % model:
    raise ConfigError(f"mesh model axis {model} does not divide d_sae={cfg.d_sae}")
  sae_lib.validate(cfg, None, src.d_in)
  b = int(config.batch_size)
  if b <= 0 or b % data:
    raise ConfigError(f"batch_size={b}: expected a positive multiple of the data axis size {data}")
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
    ckpt_lib.check_directory(os.path.join(workdir, "checkpoints"))
  return src, cfg


def clip_per_sae(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping computed separately for each SAE of the leading axis."""

  def update(updates, state, params=None):
    del params
    leaves = jax.tree.leaves(updates)
    sq = sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(jnp.sqrt(sq), 1e-12))
    return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), updates), state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_tx(config) -> optax.GradientTransformation:
  """The loop's optimizer from config.optim, but with clipping per SAE (sweeps stay independent)."""
  o = config.optim.to_dict()
  clip = float(o.get("clip_norm", 0.0) or 0.0)
  o["clip_norm"] = 0.0
  from ml_collections import ConfigDict
  base = optim.make_optimizer(ConfigDict(o), int(config.steps))
  return optax.chain(clip_per_sae(clip), base) if clip > 0 else base


def make_task(config, src, cfg: sae_lib.SAEConfig, mesh) -> loop.Task:
  sample = src.sample(int(config.norm_sample_tokens), seed=int(config.seed))
  b = int(config.batch_size)
  return loop.Task(
      init=sae_lib.make_init(cfg, sample),
      loss=sae_lib.make_loss(cfg, mesh if mesh.shape[parallel.MODEL] > 1 else None),
      batch=lambda step: src.batch(step, b),
      local_batch=lambda step, rows: src.batch_rows(step, b, rows),
      param_rules=sae_lib.param_rules(), aux_rules=sae_lib.aux_rules(),
      tx=make_tx(config), post_update=sae_lib.post_update(cfg),
      meta={"architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
            "n_saes": cfg.n_saes, "batch_size": b})


def _label(cfg, i):
  if cfg.n_saes == 1:
    return cfg.architecture
  if isinstance(cfg.k, (tuple, list)) and cfg.architecture in sae_lib.TOPK_FAMILY:
    return f"k={cfg.ks[i]}"
  return f"coef={cfg.coefs[i]:g}"


def run(config, workdir: str, mesh=None, on_metrics=None) -> dict:
  """Trains, evaluates on held-out data, exports; returns the results dict."""
  parallel.maybe_initialize_from_config(config.distributed)
  src, cfg = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  if cfg.d_sae % mesh.shape[parallel.MODEL]:
    raise ConfigError(f"mesh model axis {mesh.shape[parallel.MODEL]} does not divide "
                      f"d_sae={cfg.d_sae}")
  return workdir_lib.run_owned(workdir, config, "train_sae",
                          lambda: _train_and_evaluate(config, workdir, src, cfg, mesh, on_metrics))


def _train_and_evaluate(config, workdir: str, src, cfg, mesh, on_metrics) -> dict:
  main = parallel.is_main_process()
  task = make_task(config, src, cfg, mesh)
  result = loop.train(task, config, workdir, mesh=mesh, on_metrics=on_metrics)
  params, aux = parallel.to_host((result.state.params, result.state.aux))
  x_eval = src.sample(int(config.eval.tokens), seed=int(config.seed) + 1)
  saes, full = [], []
  for i in range(cfg.n_saes):
    p_i, a_i = sae_lib.select(params, i), sae_lib.select(aux, i)
    m = sae_eval.evaluate_sae(cfg, p_i, a_i, x_eval, batch_size=int(config.eval.batch_size))
    full.append(m)
    rec = {"architecture": cfg.architecture, "label": _label(cfg, i), "d_in": cfg.d_in,
           "d_sae": cfg.d_sae, "k": int(cfg.ks[i]), "sparsity_coef": float(cfg.coefs[i]),
           "train_dead_fraction": float(np.mean(a_i["tokens_since_fired"] >= cfg.dead_tokens)),
           "norm_scale": float(a_i["norm_scale"]),
           **sae_eval.summary(m)}
    if cfg.architecture in sae_lib.BATCH_TOPK_FAMILY:
      rec["inference_threshold"] = float(a_i["threshold"])
    if isinstance(src, sources.SyntheticSource):
      rec["planted_mean_max_cosine"] = mean_max_cosine(src.planted.dictionary, p_i["W_dec"])
    name = "sae" if cfg.n_saes == 1 else f"sae_{i}"
    if main:
      rec["export"] = sae_io.export_saelens(
          os.path.join(workdir, "export", name), cfg, p_i, a_i,
          metadata={"label": rec["label"], "data": config.data.kind, "steps": int(config.steps)})
    saes.append(rec)
  out = {"experiment": "train_sae", "architecture": cfg.architecture, "d_in": cfg.d_in,
         "d_sae": cfg.d_sae, "n_saes": cfg.n_saes, "steps": int(config.steps),
         "batch_size": int(config.batch_size), "device_count": jax.device_count(),
         "saes": saes}
  for key in ("l0", "explained_variance", "mse", "dead_fraction", "cosine",
              "planted_mean_max_cosine"):
    if key in saes[0]:
      out[key] = saes[0][key] if cfg.n_saes == 1 else [s[key] for s in saes]
  if main:
    figs = os.path.join(workdir, "figures")
    labels = [s["label"] for s in saes]
    out["figures"] = [sae_eval.plot_density_histogram(full, labels,
                                                      os.path.join(figs, "density.png")),
                      sae_eval.plot_l0_vs_ev(full, labels, os.path.join(figs, "l0_vs_ev.png"))]
    workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
