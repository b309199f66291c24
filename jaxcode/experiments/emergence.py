"""Offline NeuroMFA emergence demonstration: a small GPT-2 trained on the default corpus.

run(config, workdir): packs the offline default corpus (jaxcode.data.corpus) with the
embedded MiniLM WordPiece tokenizer (the only full tokenizer available offline; its
vocabulary is compacted to the token ids the corpus uses), trains a randomly initialised
GPT-2 (jaxcode.models.lm.gpt2 from a small transformers.GPT2Config, kernels and
embeddings N(0, 0.02) as in GPT-2) through the shared loop, saving orbax checkpoints at
log-spaced steps (training runs in segments that end at those steps), then analyses
step 0 (the initial params) and every saved step with the NeuroMFA stage's analysis
(jaxcode.pipeline.neuromfa, config.neuromfa as its block): alpha0, width, E(t) and the
matched Gaussian null, beside the training loss and a held-out loss.
Writes workdir/{config.json, metrics.jsonl, checkpoints/, results.json, figures/*.png};
rerunning resumes.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxcode import parallel
from jaxcode.analysis import neuromfa as nm
from jaxcode.data import corpus
from jaxcode import workdir as workdir_lib
from jaxcode.models.lm import hf
from jaxcode.errors import ConfigError, positive_int
from jaxcode.pipeline import neuromfa as nmfa_stage
from jaxcode.pipeline.neuromfa_study_lm import (  # noqa: F401  (the LM, shared)
    checkpoint_steps, init_params, lm_loss, logged_losses, make_module, make_task,
    train_segments)
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop, optim


def validate(config, workdir: str) -> dict:
  m = config.model
  for name in ("d_model", "n_layers", "n_heads", "d_mlp", "seq_len", "batch"):
    where = "model" if name in m else "data"
    positive_int(f"{where}.{name}", config[where][name])
  if m.d_model % m.n_heads:
    raise ConfigError(f"model.d_model={m.d_model}: expected a multiple of n_heads={m.n_heads}")
  loop.validate_train_config(config)
  data, _ = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model, jax.device_count())
  if config.data.batch % data:
    raise ConfigError(f"data.batch={config.data.batch}: expected a multiple of the data axis "
                      f"size {data}")
  steps = checkpoint_steps(config)
  nm.lm_sample(m.d_model, m.d_mlp, 1, int(config.neuromfa.S), 0)   # S fits the layers
  kw = nmfa_stage.validate(config.neuromfa)
  workdir_lib.check_workdir(workdir)
  ckpt_lib.check_directory(os.path.join(workdir, "checkpoints"))
  return {"steps": steps, "spectrum_kw": kw}


def packed_corpus(config):
  """Packed [N, seq_len + 1] ids of the default corpus, compacted vocabulary, held-out split."""
  from jaxcode.pipeline import model as model_lib
  tok = hf.load_tokenizer(model_lib.resolve("minilm").path)   # MiniLM's WordPiece vocabulary
  n_docs = int(config.data.max_docs_per_source) or None
  docs = corpus.default_corpus(n_docs)
  packed = corpus.pack(docs, tok, int(config.data.seq_len) + 1, concat=True)
  ids = packed.input_ids
  used, compact = np.unique(ids, return_inverse=True)
  ids = compact.reshape(ids.shape).astype(np.int32)
  rng = np.random.default_rng(int(config.seed))
  order = rng.permutation(len(ids))
  n_eval = max(1, min(int(config.data.eval_sequences), len(ids) // 10))
  return {"train": ids[order[n_eval:]], "train_mask": packed.attention_mask[order[n_eval:]],
          "eval": ids[order[:n_eval]], "eval_mask": packed.attention_mask[order[:n_eval]],
          "vocab": int(len(used)), "n_tokens": packed.n_tokens, "n_docs": len(docs)}


def run(config, workdir: str, mesh=None) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  parallel.maybe_initialize_from_config(config.distributed)
  return workdir_lib.run_owned(workdir, config, "emergence", lambda: _run(config, workdir, mesh))


def analyse_run(config, workdir: str, module, data: dict, steps: list[int],
                train_loss: list) -> dict:
  """The NeuroMFA stage's analysis of step 0 (the loop's initial params) and every saved
  step, each record with its step, training loss and held-out loss."""
  init = jax.jit(lambda k: init_params(module, k, float(config.model.init_std)))
  params0 = init(jax.random.PRNGKey(int(config.seed)))    # the loop's step-0 params
  series = [jax.tree.map(np.asarray, params0)]
  series += [nmfa_stage.orbax_params(workdir, s) for s in steps]
  eval_fn = jax.jit(lambda p: lm_loss(module, p, data["eval"], data["eval_mask"]))
  eval_loss = [float(eval_fn(p)) for p in series]
  labelled = [(f"step{s}", p) for s, p in zip([0] + steps, series)]
  out = nmfa_stage.analyse(config.neuromfa, labelled)
  for rec, s, tl, el in zip(out["checkpoints"], [0] + steps, train_loss, eval_loss):
    rec.update(step=s, train_loss=tl, eval_loss=el)
  return out


def _run(config, workdir: str, mesh=None) -> dict:
  validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  steps = checkpoint_steps(config)
  data = packed_corpus(config)
  module, _ = make_module(config, data["vocab"])
  tx = optim.make_optimizer(config.optim, int(config.steps))
  task = make_task(config, module, data, tx)
  live = train_segments(config, task, workdir, steps, mesh)
  logged = logged_losses(workdir)
  train_loss = [None] + [live.get(s, logged.get(s)) for s in steps]
  out = analyse_run(config, workdir, module, data, steps, train_loss)
  out = {"experiment": "emergence", "variant": config.get("variant", ""),
         "vocab": data["vocab"], "train_sequences": len(data["train"]),
         "corpus_tokens": data["n_tokens"], "corpus_docs": data["n_docs"],
         "device_count": jax.device_count(), **out}
  out["table"] = [{k: r[k] for k in ("step", "train_loss", "eval_loss", "alpha0", "width",
                                     "emergence", "null_alpha0", "null_width", "null_emergence")}
                  for r in out["checkpoints"]]
  if parallel.is_main_process():
    from jaxcode.report import neuromfa as report
    out["figures"] = report.write_all(out, os.path.join(workdir, "figures"))
    workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
