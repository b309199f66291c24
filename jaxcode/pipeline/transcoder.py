"""The transcoder stage: per-layer transcoders, skip transcoders or a cross-layer transcoder
trained on paired activations, evaluated per layer, exported.

`train_transcoders(block, folder, source, mesh)` takes configs/transcoder.py's config as it is
(kind, steps, optim, sae, batch_size, eval, norm_sample_tokens, checkpoint, seed, log_every;
the dictionary fields are the SAE block's, configs/sae.py) and a `sources.PairedSource`
({'x': [B, L, d_in], 'y': [B, L, d_out]} batches of the covered layers), and writes
folder/{metrics.jsonl, checkpoints/, export/, results.json}.

* kind 'plt' / 'skip': one transcoder (skip: with W_skip) per covered layer, all trained at
  once on one batch stream as a stack of the SAE family (jaxcode.models.sae with
  transcoder=True; dictionary i reads layer sources[i] of the batch).  A sweep of k or of the
  sparsity coefficient trains every value at every layer (layer-major order).
* kind 'clt': one cross-layer transcoder over the covered layers (jaxcode.models.clt).

Latents are sharded over the mesh's `model` axis (feature-parallel), tokens over `data`.
Rerunning resumes from the last checkpoint; a folder whose export/ exists is reused.

Per layer on held-out pairs: FVU = sum ||y - y_hat||^2 / sum ||y - mean y||^2 (one minus the
explained variance), L0, dead fraction (no firing on the held-out sample), mse.  On planted
data also the recovery of the planted encoders, decoders and skip maps (mean best cosine;
|cosine| for the encoders of signed features, whose latents may read -e; the relative error
of the skip map).  Exports, in raw activation units: plt/skip as a circuit-tracer transcoder
set and (ReLU and JumpReLU kinds) SAELens transcoders per layer; clt as a circuit-tracer CLT
folder (BatchTopK as JumpReLU at the per-layer thresholds).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from jaxcode import parallel
from jaxcode.analysis import transcoder_eval
from jaxcode.errors import ConfigError
from jaxcode.models import clt as clt_lib
from jaxcode.models import sae as sae_lib
from jaxcode.models import sae_io, transcoder_io
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import sae as sae_stage
from jaxcode.pipeline import stage
from jaxcode.train import loop

KINDS = ("plt", "skip", "clt")
HOOK_KINDS = ("resid_pre", "resid_mid", "mlp_in", "mlp_out", "resid_post", "attn_out")
# position of each block hookpoint in the forward (an input must come before its output)
HOOK_ORDER = {"resid_pre": 0, "attn_out": 1, "resid_mid": 2, "mlp_in": 3, "mlp_out": 4,
              "resid_post": 5}


# ------------------------------------------------------------------ configs

def validate_settings(block) -> None:
  """Checks of the block alone (no data, no model)."""
  if block.kind not in KINDS:
    raise ConfigError(f"kind={block.kind!r}: expected one of {KINDS}")
  sae_stage.validate_settings(block)
  if block.kind == "clt":
    if block.sae.architecture not in CLT_ARCHS:
      raise ConfigError(f"sae.architecture={block.sae.architecture!r} with kind='clt': "
                        f"expected one of {tuple(CLT_ARCHS)}")
    if block.sae.sweep_k or block.sae.sweep_coef:
      raise ConfigError("sae.sweep_k / sae.sweep_coef with kind='clt': a CLT trains one "
                        "dictionary (sweeps are for kind 'plt' and 'skip')")


def check_hooks(hook_in: str, hook_out: str) -> None:
  """The hook patterns: 'blocks.{layer}.<kind>' each, the input computed before the output."""
  kinds = []
  for name, pat in (("hook_in", hook_in), ("hook_out", hook_out)):
    kind = pat.split(".")[-1] if pat.startswith("blocks.{layer}.") else None
    if kind not in HOOK_KINDS:
      raise ConfigError(f"{name}={pat!r}: expected 'blocks.{{layer}}.<hook>' with <hook> one "
                        f"of {HOOK_KINDS}")
    kinds.append(kind)
  if HOOK_ORDER[kinds[1]] <= HOOK_ORDER[kinds[0]]:
    raise ConfigError(f"hook_out={hook_out!r} is computed before (or at) hook_in={hook_in!r}: "
                      "the output hookpoint must come after the input one")


def check_layers(layers, n_model_layers: int | None, kind: str) -> tuple[int, ...]:
  """The covered layers: non-empty, increasing, in the model; consecutive for a CLT."""
  ls = tuple(int(l) for l in layers)
  if not ls or any(b <= a for a, b in zip(ls, ls[1:])) or ls[0] < 0:
    raise ConfigError(f"layers={tuple(layers)}: expected increasing non-negative layer indices")
  if n_model_layers is not None and ls[-1] >= n_model_layers:
    raise ConfigError(f"layers={ls}: the model has {n_model_layers} layers (0..."
                      f"{n_model_layers - 1})")
  if kind == "clt" and ls != tuple(range(ls[0], ls[-1] + 1)):
    raise ConfigError(f"layers={ls} with kind='clt': a cross-layer transcoder needs "
                      "consecutive layers")
  return ls


def _stack(block, n_layers: int) -> dict:
  """k, coefficient and layer of each dictionary of a plt/skip stack (layer-major)."""
  s = block.sae
  ks = tuple(int(v) for v in s.sweep_k) or (int(s.k),)
  cs = tuple(float(v) for v in s.sweep_coef) or (float(s.sparsity_coef),)
  if len(ks) > 1 and len(cs) > 1 and len(ks) != len(cs):
    raise ConfigError(f"sae.sweep_k={s.sweep_k} and sae.sweep_coef={s.sweep_coef}: sweeps of "
                      "different lengths")
  n = max(len(ks), len(cs))
  ks, cs = (ks * n)[:n] if len(ks) == 1 else ks, (cs * n)[:n] if len(cs) == 1 else cs
  return {"k": tuple(k for _ in range(n_layers) for k in ks),
          "coef": tuple(c for _ in range(n_layers) for c in cs),
          "sources": tuple(j for j in range(n_layers) for _ in range(n))}


def sae_family_config(block, n_layers: int, d_in: int, d_out: int) -> sae_lib.SAEConfig:
  """The SAE-family stack of a plt/skip block over n_layers covered layers."""
  base = sae_stage.sae_config(block, d_in)
  st = _stack(block, n_layers)
  return dataclasses.replace(base, transcoder=True, skip=block.kind == "skip", d_out=int(d_out),
                             k=st["k"], sparsity_coef=st["coef"], sources=st["sources"])


CLT_ARCHS = {"relu": "relu", "jumprelu_tanh": "jumprelu", "topk": "topk",
             "batchtopk": "batchtopk"}


def clt_config(block, n_layers: int, d_in: int, d_out: int) -> clt_lib.CLTConfig:
  s = block.sae
  return clt_lib.CLTConfig(
      architecture=CLT_ARCHS[s.architecture], n_layers=int(n_layers), d_in=int(d_in),
      d_out=int(d_out), d_sae=sae_stage.d_sae(block, d_in), k=int(s.k),
      sparsity_coef=float(s.sparsity_coef), sparsity_warmup_steps=int(s.sparsity_warmup_steps),
      k_aux=int(s.k_aux) if int(s.k_aux) > 0 else None, aux_alpha=float(s.aux_alpha),
      dead_tokens=int(s.dead_tokens), jump_bandwidth=float(s.jump_bandwidth),
      jump_threshold_init=float(s.jump_threshold_init), tanh_c=float(s.tanh_c),
      pre_act_coef=float(s.pre_act_coef), threshold_ema=float(s.threshold_ema),
      threshold_ema_start=int(s.threshold_ema_start), dec_init_norm=float(s.dec_init_norm),
      b_dec_init="zeros" if s.b_dec_init == "zeros" else "mean",
      normalisation=s.normalisation, skip=False, sparse_decode=sae_lib.resolve_sparse_decode(s.sparse_decode))


def validate(block, n_layers: int, d_in: int, d_out: int, data_axis: int = 1,
             model_axis: int = 1):
  """validate_settings, then the dictionary for these widths on a mesh of these axis sizes;
  returns its config (SAEConfig stack or CLTConfig)."""
  validate_settings(block)
  if int(block.sae.d_in) > 0 and int(block.sae.d_in) != int(d_in):
    raise ConfigError(f"sae.d_in={block.sae.d_in} does not match the input hookpoints' width "
                      f"{d_in}")
  if block.kind == "clt":
    cfg = clt_config(block, n_layers, d_in, d_out)
    clt_lib.validate(cfg)
  else:
    cfg = sae_family_config(block, n_layers, d_in, d_out)
    sae_lib.validate(cfg, None, d_in)
  if cfg.d_sae % model_axis:
    raise ConfigError(f"mesh model axis {model_axis} does not divide the {cfg.d_sae} latents "
                      "per layer (sae.d_sae)")
  if int(block.batch_size) % data_axis:
    raise ConfigError(f"batch_size={block.batch_size}: expected a multiple of the data axis "
                      f"size {data_axis}")
  return cfg


def paired_source(block, extract_folder: str, lm, spec, hooks, n_layers: int, d_in: int,
                  d_out: int, log=None):
  """The PairedSource of a model's hookpoints (hook_in of every covered layer, then hook_out):
  block.source 'cache' caches them first under extract_folder (resuming chunk by chunk, reused
  when complete; extraction on a data-parallel mesh of every device), 'lm' computes them with
  the model for every batch. block: configs/transcoder.py's fields (extract, data.seed)."""
  from jaxcode.data import sources
  seed = int(block.data.seed)
  if block.source == "cache":
    cache_dir = os.path.join(extract_folder, cache_lib.CACHE)
    old = stage.read_final(extract_folder)
    if not (old and old.get("complete") and not cache_lib.damage(cache_dir)):
      if log:
        log(f"extract: caching {len(hooks)} hookpoints of {spec.name}")
      mesh = parallel.make_mesh(-1, 1)
      model = model_lib.load(spec, mesh=mesh, dtype=cache_lib.compute_dtype(block.extract))
      res = cache_lib.cache_activations(block.extract, extract_folder, model, spec, hooks, mesh)
      if log:
        log(f"extract: {res['n_tokens']} tokens")
    flat = sources.ActivationCacheSource(cache_dir, hooks, seed=seed)
  else:
    packed = cache_lib.pack_corpus(block.extract, lm.tokenizer)
    flat = sources.LMSource(lm, packed.input_ids, packed.attention_mask, hooks, seed=seed)
  return sources.PairedSource(flat, n_layers, d_in, d_out, seed=seed, hooks=hooks)


def lib_of(cfg):
  return clt_lib if isinstance(cfg, clt_lib.CLTConfig) else sae_lib


def make_task(block, source, cfg, mesh) -> loop.Task:
  """The training loop's task: init from a sample of pairs, the loss, the paired batches."""
  lib = lib_of(cfg)
  sample = source.sample(int(block.norm_sample_tokens), seed=int(block.seed))
  b = int(block.batch_size)
  return loop.Task(
      init=lib.make_init(cfg, sample),
      loss=lib.make_loss(cfg, mesh if mesh.shape[parallel.MODEL] > 1 else None),
      batch=lambda step: source.batch(step, b),
      local_batch=lambda step, rows: source.batch_rows(step, b, rows),
      param_rules=lib.param_rules(), aux_rules=lib.aux_rules(), tx=sae_stage.make_tx(block),
      post_update=lib.post_update(cfg),
      meta={"kind": block.kind, "architecture": cfg.architecture, "d_in": cfg.d_in,
            "d_sae": cfg.d_sae, "n_layers": source.n_layers, "batch_size": b})


def train_transcoders(block, folder: str, source, mesh, layers, on_metrics=None,
                      facts: dict | None = None) -> dict:
  """The stage; returns (and writes last) folder/results.json.  `layers` are the model layers
  the source's layer axis covers; `facts` (model_name, hook_in, hook_out patterns) go into
  the exports."""
  cfg = validate(block, source.n_layers, source.d_in, source.d_out,
                 mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL])
  compute = lambda: _train_and_evaluate(block, folder, source, cfg, mesh, tuple(layers),
                                        on_metrics, facts or {})
  if not parallel.is_main_process():
    return compute()
  done = lambda out: os.path.isdir(os.path.join(folder, "export"))
  return stage.run_stage("transcoder", folder, compute, reuse=done, log=False)


def _train_and_evaluate(block, folder, source, cfg, mesh, layers, on_metrics, facts) -> dict:
  task = make_task(block, source, cfg, mesh)
  result = loop.train(task, block, folder, mesh=mesh, on_metrics=on_metrics)
  params, aux = parallel.to_host((result.state.params, result.state.aux))
  held = source.sample(int(block.eval.tokens), seed=int(block.seed) + 1)
  out = {"experiment": "train_transcoder", "kind": block.kind,
         "architecture": block.sae.architecture, "layers": list(layers), "d_in": source.d_in,
         "d_out": source.d_out, "d_sae": cfg.d_sae, "steps": int(block.steps),
         "batch_size": int(block.batch_size), "device_count": jax.device_count(),
         "data": source.kind, "per_layer": _evaluate(block, cfg, params, aux, held, layers,
                                                     source)}
  for key in ("fvu", "l0", "dead_fraction"):
    out[f"mean_{key}"] = float(np.mean([r[key] for r in out["per_layer"]]))
  if parallel.is_main_process():
    out["export"] = export(os.path.join(folder, "export"), cfg, params, aux, layers, facts)
  return out


def _evaluate(block, cfg, params, aux, held, layers, source) -> list[dict]:
  planted = getattr(source, "planted", None)
  b = int(block.eval.batch_size)
  if isinstance(cfg, clt_lib.CLTConfig):
    recs = transcoder_eval.evaluate_clt(cfg, sae_lib.select(params, 0), sae_lib.select(aux, 0),
                                        held, b, planted)
  else:
    labels = [_label(cfg, i) for i in range(cfg.n_saes)]
    recs = transcoder_eval.evaluate_stack(cfg, params, aux, held, labels, b, planted)
  for r in recs:
    r["layer"] = int(layers[r["layer_index"]])
  return recs


def _label(cfg: sae_lib.SAEConfig, i: int) -> str:
  if len(set(cfg.ks)) > 1:
    return f"k={cfg.ks[i]}"
  if len(set(cfg.coefs)) > 1:
    return f"coef={cfg.coefs[i]:g}"
  return cfg.architecture


def _hooks(facts: dict, layer: int) -> tuple:
  return tuple(facts.get(k, f"blocks.{{layer}}.{d}").format(layer=layer)
               for k, d in (("hook_in", "mlp_in"), ("hook_out", "mlp_out")))


def export(directory: str, cfg, params, aux, layers, facts: dict) -> dict:
  """Writes the exports (raw units) and returns {format: path or reason}."""
  hook_in = facts.get("hook_in", "blocks.{layer}.mlp_in")
  hook_out = facts.get("hook_out", "blocks.{layer}.mlp_out")
  model = facts.get("model_name")
  os.makedirs(directory, exist_ok=True)
  out = {}
  if isinstance(cfg, clt_lib.CLTConfig):
    ext = transcoder_io.external_clt(cfg, sae_lib.select(params, 0), sae_lib.select(aux, 0),
                                     layers=layers, hook_in=hook_in, hook_out=hook_out,
                                     model_name=model)
    out["circuit_tracer"] = transcoder_io.export_circuit_tracer_clt(
        os.path.join(directory, "circuit_tracer"), ext)
    return out
  exts = [transcoder_io.external_transcoder(
      transcoder_eval.single(cfg, i), sae_lib.select(params, i), sae_lib.select(aux, i),
      hook_in=_hooks(facts, layers[src])[0], hook_out=_hooks(facts, layers[src])[1])
      for i, src in enumerate(cfg.sources)]
  per_sweep = cfg.n_saes // len(layers)
  for s in range(per_sweep):
    tag = "" if per_sweep == 1 else f"_{s}"
    mine = [exts[j * per_sweep + s] for j in range(len(layers))]
    out[f"circuit_tracer{tag}"] = transcoder_io.export_circuit_tracer_plts(
        os.path.join(directory, f"circuit_tracer{tag}"), mine, list(layers), model_name=model)
    if mine[0].architecture == "topk":
      out[f"saelens{tag}"] = "not written: SAELens 6 has no TopK transcoder architecture"
      continue
    out[f"saelens{tag}"] = [sae_io.export_saelens_external(
        os.path.join(directory, f"saelens{tag}", f"layer_{l}"), t,
        metadata={"model_name": model, "hook_name": t.hook_in, "hook_name_out": t.hook_out})
        for l, t in zip(layers, mine)]
  return out
