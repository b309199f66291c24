"""The SAE-training stage: one SAE or a vmapped sweep trained on a source, evaluated, exported.

`train_saes(block, folder, source, mesh)` takes the SAE experiment's config block as it is
(configs/sae.py: steps, optim, sae, batch_size, eval, norm_sample_tokens, checkpoint, seed,
log_every; `data` is not read: the caller builds the source, see jaxcode.data.sources) and
writes folder/{metrics.jsonl, checkpoints/, export/<name>/ (SAELens layout), results.json};
rerunning resumes from the last checkpoint (parameters, Adam state, dead-latent counters,
BatchTopK threshold EMA and the normalisation scalar all live in the train state; the data
position is the step), and a complete folder is reused.

One SAE schema: the fields of `block.sae` (their defaults are configs/sae.py's, declared
once there) make the SAEConfig through `sae_config`, which adds no default of its own;
`sae.d_sae = 0` means 2 x the data width, resolved from the source's d_in. Every entry point
checks a block with `validate_settings` (the block alone) and `validate` (with the data
width and the mesh).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcode import parallel
from jaxcode.analysis import sae_eval
from jaxcode.data.synthetic import mean_max_cosine
from jaxcode.errors import ConfigError
from jaxcode.models import sae as sae_lib
from jaxcode.models import sae_io
from jaxcode.pipeline import stage
from jaxcode.train import loop, optim

# SAEConfig fields read from block.sae as they are (the others are converted in sae_config).
_CONVERTED = ("architecture", "d_in", "d_sae", "k", "sparsity_coef", "k_aux",
              "matryoshka_widths")
# SAEConfig fields a transcoder stage sets from its data (jaxcode.pipeline.transcoder), not
# block fields: an SAE keeps their defaults.
_TRANSCODER = ("transcoder", "skip", "d_out", "sources")
SAE_FIELDS = tuple(f.name for f in dataclasses.fields(sae_lib.SAEConfig)
                   if f.name not in _CONVERTED + _TRANSCODER)


def d_sae(block, d_in: int) -> int:
  """The latents: block.sae.d_sae, or 2 x d_in when it is 0."""
  m = int(block.sae.d_sae)
  return 2 * int(d_in) if m == 0 else m


def sae_config(block, d_in: int) -> sae_lib.SAEConfig:
  """The SAEConfig of block.sae for data of width d_in (sweep_k / sweep_coef, when set, make
  a vmapped sweep); every SAEConfig field comes from the block."""
  s = block.sae
  missing = [f for f in SAE_FIELDS + ("architecture", "d_sae", "k", "sweep_k", "sparsity_coef",
                                      "sweep_coef", "k_aux", "matryoshka_widths") if f not in s]
  if missing:
    raise ConfigError(f"sae: the block has no field {missing[0]!r} (expected the fields of "
                      "configs/sae.py's sae block)")
  k = tuple(int(v) for v in s.sweep_k) if s.sweep_k else int(s.k)
  coef = tuple(float(v) for v in s.sweep_coef) if s.sweep_coef else float(s.sparsity_coef)
  return sae_lib.SAEConfig(
      architecture=s.architecture, d_in=int(d_in), d_sae=d_sae(block, d_in), k=k,
      sparsity_coef=coef, k_aux=(int(s.k_aux) if int(s.k_aux) > 0 else None),
      matryoshka_widths=tuple(int(w) for w in s.matryoshka_widths),
      **{f: s[f] for f in SAE_FIELDS})


def validate_settings(block, where: str = "") -> None:
  """The checks of the block alone (no data, no devices, no files); `where` prefixes the
  field names (e.g. 'sae_train.' for the experiments that embed this block)."""
  try:
    if block.sae.architecture not in sae_lib.ARCHITECTURES:
      raise ConfigError(f"sae.architecture={block.sae.architecture!r}: expected one of "
                        f"{sae_lib.ARCHITECTURES}")
    if isinstance(block.sae.d_sae, bool) or int(block.sae.d_sae) < 0:
      raise ConfigError(f"sae.d_sae={block.sae.d_sae!r}: expected a positive integer "
                        "(0: 2 x the data width)")
    loop.validate_train_config(block)
    for name, value, low in (("batch_size", block.batch_size, 1),
                             ("norm_sample_tokens", block.norm_sample_tokens, 1),
                             ("eval.tokens", block.eval.tokens, 2),
                             ("eval.batch_size", block.eval.batch_size, 1)):
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: expected an integer >= {low}"
                          + (" (the explained variance needs two tokens)" if low == 2 else ""))
  except ConfigError as e:
    raise ConfigError(f"{where}{e}") from None


def validate(block, d_in: int, data_axis: int = 1, model_axis: int = 1,
             where: str = "") -> sae_lib.SAEConfig:
  """validate_settings, then the SAE for data of width d_in on a mesh of these axis sizes;
  returns its SAEConfig."""
  validate_settings(block, where)
  try:
    if int(block.sae.d_in) > 0 and int(block.sae.d_in) != int(d_in):
      raise ConfigError(f"sae.d_in={block.sae.d_in} does not match the data's d_in={d_in}")
    cfg = sae_config(block, d_in)
    if cfg.d_sae % model_axis:
      raise ConfigError(f"mesh model axis {model_axis} does not divide d_sae={cfg.d_sae}")
    sae_lib.validate(cfg, None, d_in)
    b = int(block.batch_size)
    if b % data_axis:
      raise ConfigError(f"batch_size={b}: expected a positive multiple of the data axis "
                        f"size {data_axis}")
  except ConfigError as e:
    raise ConfigError(f"{where}{e}") from None
  return cfg


def clip_per_sae(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping computed separately for each SAE of the leading axis."""

  def update(updates, state, params=None):
    del params
    leaves = jax.tree.leaves(updates)
    sq_S = sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1) for g in leaves)
    scale_S = jnp.minimum(1.0, max_norm / jnp.maximum(jnp.sqrt(sq_S), 1e-12))
    return jax.tree.map(lambda g: g * scale_S.reshape((-1,) + (1,) * (g.ndim - 1)),
                        updates), state

  return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def make_tx(block) -> optax.GradientTransformation:
  """The loop's optimizer from block.optim, but with clipping per SAE (sweeps stay
  independent)."""
  from ml_collections import ConfigDict
  o = block.optim.to_dict()
  clip = float(o.get("clip_norm", 0.0) or 0.0)
  o["clip_norm"] = 0.0
  base = optim.make_optimizer(ConfigDict(o), int(block.steps))
  return optax.chain(clip_per_sae(clip), base) if clip > 0 else base


def make_task(block, source, cfg: sae_lib.SAEConfig, mesh) -> loop.Task:
  """The training loop's task: init from a norm sample, loss, batches of the source."""
  sample_ND = source.sample(int(block.norm_sample_tokens), seed=int(block.seed))
  b = int(block.batch_size)
  return loop.Task(
      init=sae_lib.make_init(cfg, sample_ND),
      loss=sae_lib.make_loss(cfg, mesh if mesh.shape[parallel.MODEL] > 1 else None),
      batch=lambda step: source.batch(step, b),
      local_batch=lambda step, rows: source.batch_rows(step, b, rows),
      param_rules=sae_lib.param_rules(), aux_rules=sae_lib.aux_rules(),
      tx=make_tx(block), post_update=sae_lib.post_update(cfg),
      meta={"architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
            "n_saes": cfg.n_saes, "batch_size": b})


def label(cfg: sae_lib.SAEConfig, i: int) -> str:
  """How results and figures name SAE i of a sweep."""
  if cfg.n_saes == 1:
    return cfg.architecture
  if isinstance(cfg.k, (tuple, list)) and cfg.architecture in sae_lib.TOPK_FAMILY:
    return f"k={cfg.ks[i]}"
  return f"coef={cfg.coefs[i]:g}"


def train_saes(block, folder: str, source, mesh, on_metrics=None,
               figures: Callable[[dict, str], list] | None = None) -> dict:
  """The stage: trains, evaluates on held-out samples of the source, exports; returns (and
  writes last) folder/results.json. `figures(results, figdir)`, when given, draws the
  figures (e.g. jaxcode.report.sae.write_all) and its paths are recorded as 'figures'."""
  cfg = validate(block, source.d_in, mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL])
  compute = lambda: _train_and_evaluate(block, folder, source, cfg, mesh, on_metrics, figures)
  if not parallel.is_main_process():    # trains its share; the main process writes the files
    return compute()
  done = lambda out: os.path.isdir(os.path.join(folder, "export"))
  return stage.run_stage("sae", folder, compute, reuse=done, log=False)


def _train_and_evaluate(block, folder: str, source, cfg, mesh, on_metrics, figures) -> dict:
  main = parallel.is_main_process()
  task = make_task(block, source, cfg, mesh)
  result = loop.train(task, block, folder, mesh=mesh, on_metrics=on_metrics)
  params, aux = parallel.to_host((result.state.params, result.state.aux))
  x_eval_ND = source.sample(int(block.eval.tokens), seed=int(block.seed) + 1)
  saes = [_evaluate_one(block, folder, source, cfg, params, aux, i, x_eval_ND, main)
          for i in range(cfg.n_saes)]
  out = {"experiment": "train_sae", "architecture": cfg.architecture, "d_in": cfg.d_in,
         "d_sae": cfg.d_sae, "n_saes": cfg.n_saes, "steps": int(block.steps),
         "batch_size": int(block.batch_size), "device_count": jax.device_count(),
         "saes": saes}
  for key in ("l0", "explained_variance", "mse", "dead_fraction", "cosine",
              "planted_mean_max_cosine"):
    if key in saes[0]:
      out[key] = saes[0][key] if cfg.n_saes == 1 else [s[key] for s in saes]
  if main and figures is not None:
    out["figures"] = figures(out, os.path.join(folder, "figures"))
  return out


def _source_facts(source) -> dict:
  """What SAELens' metadata block records of the data, where the source knows it: the
  hookpoint (our names), the model and the context length of an activation cache or LM."""
  facts = {"hook_name": getattr(source, "hookpoint", None) or None}
  manifest = getattr(getattr(source, "cache", None), "manifest", None)
  if manifest:
    facts.update(model_name=manifest.get("model"), context_size=manifest.get("seq_len"))
  lm = getattr(source, "lm", None)
  if lm is not None:
    facts.update(model_name=lm.model_dir, context_size=int(source.ids.shape[1]))
  return facts


def _evaluate_one(block, folder: str, source, cfg, params, aux, i: int, x_eval_ND,
                  main: bool) -> dict:
  """SAE i of the (host) parameters: its metrics, and its export on the main process."""
  p_i, a_i = sae_lib.select(params, i), sae_lib.select(aux, i)
  m = sae_eval.evaluate_sae(cfg, p_i, a_i, x_eval_ND, batch_size=int(block.eval.batch_size))
  rec = {"architecture": cfg.architecture, "label": label(cfg, i), "d_in": cfg.d_in,
         "d_sae": cfg.d_sae, "k": int(cfg.ks[i]), "sparsity_coef": float(cfg.coefs[i]),
         "train_dead_fraction": float(np.mean(a_i["tokens_since_fired"] >= cfg.dead_tokens)),
         "norm_scale": float(a_i["norm_scale"]),
         **sae_eval.summary(m)}
  if cfg.architecture in sae_lib.BATCH_TOPK_FAMILY:
    rec["inference_threshold"] = float(a_i["threshold"])
  planted = getattr(source, "planted", None)
  if planted is not None:
    rec["planted_mean_max_cosine"] = mean_max_cosine(planted.dictionary, p_i["W_dec"])
  name = "sae" if cfg.n_saes == 1 else f"sae_{i}"
  if main:
    rec["export"] = sae_io.export_saelens(
        os.path.join(folder, "export", name), cfg, p_i, a_i,
        metadata={"label": rec["label"], "data": source.kind, "steps": int(block.steps)},
        **_source_facts(source))
  return rec


_OURS = re.compile(r"^blocks\.\d+\.\w+$")     # a hookpoint name of ours


def own_hookpoint(override: str, sae) -> str:
  """The hookpoint a dictionary is read at: `override` when set, else the dictionary's own
  hook name when it is one of ours (blocks.<i>.<site>); refused in one line otherwise."""
  if override:
    return override
  own = getattr(sae, "hook_in", None) if sae is not None else None
  if isinstance(own, str) and _OURS.match(own):
    return own
  raise ConfigError(f"hookpoint='': the dictionary names no hookpoint of ours ({own!r}): "
                    "expected --config.hookpoint=blocks.<i>.<site>")


def train_on_lm(block, folder: str, lm, packed, hookpoint: str, mesh) -> tuple[str, dict]:
  """Dictionaries per `block` (configs/sae.py's fields) on `hookpoint`, the model computing
  each batch from the packed rows (data.sources.LMSource); returns (the first dictionary's
  export path, train_saes' result)."""
  from jaxcode.data import sources
  src = sources.LMSource(lm, packed.input_ids, packed.attention_mask, hookpoint,
                         seed=int(block.data.seed))
  res = train_saes(block, folder, src, mesh)
  return os.path.join(folder, "export", "sae"), res
