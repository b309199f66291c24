"""The SAEBench-evals stage: one dictionary scored by the offline SAEBench evals, one JSON each.

  run_evals(lm, sae, hookpoint, packed, evals, outdir, block, sae_id, model_name)
      -> {eval name: path of its SAEBench-schema JSON}

writes outdir/<eval_type_id>/<release>_<sae_id>_eval_results.json (jaxcode.analysis.saebench);
an eval whose file exists is skipped (resumable per eval). `block` holds the fields of
configs/evaluate.py's eval_block() (release, core, absorption, absorption_batch_size, probing):
the evaluate experiment passes its top-level config, the atlas can embed eval_block() and pass
it as it is. `check(block, lm, evals, model_name)` does every check before compute (eval names,
an LM head where an eval needs one, settings, the probing tasks' labels) and returns the
probing tasks for run_evals(tasks=...). The comparison page of a folder of results is
jaxcode.report.evaluate.write_page(outdir).

  core            the packed rows (`packed`, e.g. cache_lib.load_packed of the data block):
                  reconstruction and sparsity metrics on their valid tokens, and the three
                  spliced forwards of jaxcode.analysis.spliced_eval
  absorption      first-letter ICL prompts from the model's vocabulary (causal LMs only)
  sparse_probing  the offline tasks of `probing_tasks`, mean-pooled (BOS / special / padding
                  positions left out of the mean)
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import saebench, saebench_absorption as absorb, saebench_probing as probing
from jaxcode.errors import ConfigError
from jaxcode.models import sae_io

TASKS = ("source", "categories", "first_letter")
TEMPLATES = ("I saw a {} today.", "This page is about the {}.", "Here is one {}.",
             "They talked about the {} for hours.")


def absorption_settings(block) -> absorb.AbsorptionSettings:
  a = block.absorption
  return absorb.AbsorptionSettings(**{f.name: a[f.name] for f in
                                      dataclasses.fields(absorb.AbsorptionSettings)})


def _task_names(block) -> tuple[str, ...]:
  names = tuple(t.strip() for t in str(block.probing.tasks).split(",") if t.strip())
  for t in names or ("",):
    if t not in TASKS:
      raise ConfigError(f"probing.tasks: {t!r} is not a task: expected a comma-separated "
                        f"subset of {', '.join(TASKS)}")
  return names


def resolve_names(names, lm) -> tuple[str, ...]:
  """The requested evals: 'all' is every offered eval the model supports (absorption only on
  causal LMs); otherwise the names, checked (saebench.check_eval_names)."""
  if isinstance(names, str) and names.strip() == "all":
    return tuple(n for n in saebench.EVALS
                 if n not in saebench.NEEDS_CAUSAL_LM or saebench.is_causal_lm(lm))
  return saebench.check_eval_names(names)


def check(block, lm, evals, model_name: str) -> dict:
  """Every check before compute; returns {task: (texts, labels, groups)} for sparse_probing."""
  names = saebench.check_eval_names(evals)
  saebench.check_model_for(names, lm, model_name)
  for name in ("rows_per_batch",):
    v = block.core[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ConfigError(f"core.{name}={v!r}: expected a positive integer")
  tasks = {}
  if "absorption" in names:
    absorption_settings(block).check()
  if "sparse_probing" in names:
    p = block.probing
    probing.check_ks(p.ks)
    for name in ("max_per_class", "context", "batch_size"):
      if isinstance(p[name], bool) or not isinstance(p[name], int) or p[name] < 1:
        raise ConfigError(f"probing.{name}={p[name]!r}: expected a positive integer")
    if not 0 < p.test_fraction < 1:
      raise ConfigError(f"probing.test_fraction={p.test_fraction!r}: expected 0 < x < 1")
    tasks = probing_tasks(block, lm.tokenizer)
    for task, (_, labels, groups) in tasks.items():   # every class's split, before compute
      probing.class_splits(labels, probing.split_groups(groups, float(p.test_fraction),
                                                        int(p.seed)), int(p.seed))
  return tasks


def probing_tasks(block, tokenizer) -> dict:
  """{task: (texts, labels, groups)}; each task's labels checked to hold two classes."""
  from jaxcode.analysis import four_properties
  from jaxcode.data import corpus as corpus_lib
  p, out = block.probing, {}
  n = int(p.max_per_class)
  for task in _task_names(block):
    if task == "source":
      docs = corpus_lib.default_corpus(n)
      out[task] = ([d.text[:4000] for d in docs], [d.source for d in docs],
                   list(range(len(docs))))
    elif task == "categories":
      cats = four_properties.load_categories()
      keep = [c.strip() for c in str(p.categories).split(",") if c.strip()] or list(cats)
      for c in keep:
        if c not in cats:
          raise ConfigError(f"probing.categories: {c!r} is not a category: expected some of "
                            f"{', '.join(cats)}")
      rows = [(t.format(w), c, w) for c in keep for w in cats[c][:n] for t in TEMPLATES]
      out[task] = tuple(list(v) for v in zip(*rows))
    else:
      words = absorb.letter_vocab(tokenizer, 20000)
      by = {}
      for _, w in words:
        by.setdefault(w[0].lower(), []).append(w)
      top = sorted(by, key=lambda k: -len(by[k]))[:5]     # SAEBench: <= 5 classes per task
      rows = [(w, k, w) for k in top for w in by[k][:n]]
      out[task] = tuple(list(v) for v in zip(*rows)) if rows else ([], [], [])
    probing.check_labels(task, out[task][1])
  return out


def _pad_batch(seqs: list[list[int]], pad: int, rows: int, length: int):
  """[rows, T] ids and mask, right-padded; T = `length` rounded up to cover every sequence
  (fixed shapes: one compile per stage)."""
  T = max(length, max(len(s) for s in seqs))
  ids = np.full((rows, T), pad, np.int32)
  mask = np.zeros((rows, T), np.int32)
  for i, s in enumerate(seqs):
    ids[i, :len(s)], mask[i, :len(s)] = s, 1
  mask[len(seqs):, 0] = 1          # padding rows attend to one token (no empty softmax)
  return ids, mask


def _hidden(lm, hookpoint: str, seqs: list[list[int]], batch: int):
  """Yields (start, x [b, T, D] numpy, mask [b, T]) for batches of token sequences, every
  batch padded to `batch` rows of the longest sequence's length (rounded up to 16)."""
  fwd = lm.forward_fn((hookpoint,))
  pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
  length = -(-max(len(s) for s in seqs) // 16) * 16
  for b0 in range(0, len(seqs), batch):
    part = seqs[b0:b0 + batch]
    ids, mask = _pad_batch(part, pad, batch, length)
    x = fwd(lm.params, jnp.asarray(ids), jnp.asarray(mask))[hookpoint]
    yield b0, np.asarray(x, np.float32)[:len(part)], mask[:len(part)]


def _encode_fn(sae, chunk: int = 1024):
  """x [N, d_in] -> codes [N, d_sae] numpy, in zero-padded chunks of `chunk` rows (one
  compile)."""
  enc = jax.jit(lambda x: sae_io.encode(sae, x))

  def encode(x):
    x = np.asarray(x, np.float32)
    out = np.zeros((len(x), sae.d_sae), np.float32)
    for i in range(0, len(x), chunk):
      part = x[i:i + chunk]
      buf = np.zeros((chunk, x.shape[1]), np.float32)
      buf[:len(part)] = part
      out[i:i + len(part)] = np.asarray(enc(jnp.asarray(buf)))[:len(part)]
    return out
  return encode


def core_eval(lm, sae, hookpoint: str, packed, block) -> tuple[dict, list, dict]:
  """(metrics, per-latent rows, unstructured) of SAEBench core (jaxcode.analysis.saebench)."""
  from jaxcode.analysis import spliced_eval
  from jaxcode.pipeline import dashboards as dash
  rows = int(block.core.rows_per_batch)
  fwd = jax.jit(lambda x: (sae_io.encode(sae, x), sae_io.forward(sae, x)))
  sums = saebench.CoreSums(sae.d_in, sae.d_sae)
  batches = dash.LMBatches(lm, packed, hookpoint, rows)
  for i in range(len(batches)):
    b = batches[i]
    f, x_hat = (np.asarray(v) for v in fwd(jnp.asarray(b["x"])))
    v = b["valid"]
    sums.add(b["x"][v], x_hat[v], f[v], b["row"][v])
  spliced = spliced_eval.spliced_eval(lm, packed.input_ids, packed.attention_mask, hookpoint,
                                      lambda x: sae_io.forward(sae, x), special=packed.special,
                                      batch_size=rows)
  return saebench.core_result_parts(sums.metrics(), saebench.latent_weights(sae), spliced,
                                    sums.n)


def absorption_eval(lm, sae, hookpoint: str, block) -> dict:
  """saebench_absorption.absorption on the model's first-letter ICL prompts."""
  from jaxcode.data import corpus as corpus_lib
  s = absorption_settings(block)
  words = absorb.letter_vocab(lm.tokenizer, s.max_words)
  test = absorb.split_tokens(len(words), s.test_fraction, s.seed)
  prefix = corpus_lib.special_affixes(lm.tokenizer)[0]
  seqs, pos, order = [], [], []
  for part in (False, True):
    idx = np.nonzero(test == part)[0]
    ids, p = absorb.prompt_ids(lm.tokenizer, [words[i] for i in idx], s.n_icl, s.seed, prefix)
    seqs, pos, order = seqs + ids, pos + p, order + list(idx)
  x = np.zeros((len(seqs), lm.hookpoint_width(hookpoint)), np.float32)
  for b0, h, _ in _hidden(lm, hookpoint, seqs, int(block.absorption_batch_size)):
    x[b0:b0 + len(h)] = h[np.arange(len(h)), pos[b0:b0 + len(h)]]
  order = np.asarray(order)
  letters = np.array([absorb.LETTERS.index(words[i][1][0].lower()) for i in order])
  w_dec = np.asarray(sae_io.external_raw_arrays(sae)["W_dec"])
  # codes times the raw-unit decoder row norms: p_i = f_i c_i is then in the units of
  # a = x.u, as SAEBench's formulas assume with unit-norm decoders
  codes = _encode_fn(sae)(x) * sae_io.decoder_row_norms(w_dec)[None].astype(np.float32)
  res = absorb.absorption(x, codes, w_dec, letters, test[order], s)
  res["n_words"] = len(words)
  return res


def _pooled(lm, sae, hookpoint: str, texts, context: int, batch: int):
  """Mean-pooled activations [N, D] and codes [N, M] over valid positions of each text."""
  from jaxcode.data import corpus as corpus_lib
  pre, suf = corpus_lib.special_affixes(lm.tokenizer)
  body = context - len(pre) - len(suf)
  enc = lm.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
  seqs = [pre + e[:body] + suf for e in enc]
  encode = _encode_fn(sae)
  xs, fs = np.zeros((len(seqs), sae.d_in)), np.zeros((len(seqs), sae.d_sae))
  for b0, h, mask in _hidden(lm, hookpoint, seqs, batch):
    valid = mask.astype(bool)
    valid[:, :len(pre)] = False
    for i in range(len(h)):
      n = len(seqs[b0 + i])
      valid[i, n - len(suf):] = False
    f = encode(h.reshape(-1, h.shape[-1])).reshape(h.shape[:2] + (-1,))
    w = valid / np.maximum(valid.sum(1, keepdims=True), 1)
    xs[b0:b0 + len(h)] = np.einsum("bt,btd->bd", w, h)
    fs[b0:b0 + len(h)] = np.einsum("bt,btm->bm", w, f)
  return xs, fs


def probing_eval(lm, sae, hookpoint: str, tasks: dict, block) -> tuple[dict, list, dict]:
  p, per = block.probing, {}
  for task, (texts, labels, groups) in tasks.items():
    xs, fs = _pooled(lm, sae, hookpoint, texts, int(p.context), int(p.batch_size))
    test = probing.split_groups(groups, float(p.test_fraction), int(p.seed))
    per[task] = probing.task_accuracies({"llm": xs, "sae": fs}, labels, test, tuple(p.ks),
                                        int(p.seed))
    per[task]["n_examples"] = len(texts)
  metrics, details = probing.result_parts({t: {k: v for k, v in r.items() if k != "n_examples"}
                                           for t, r in per.items()}, tuple(p.ks))
  for d in details:
    d["n_examples"] = per[d["dataset_name"]]["n_examples"]
  sizes = {t: {"examples": len(v[1]), "classes": sorted(set(v[1]))} for t, v in tasks.items()}
  return metrics, details, {"tasks": sizes, "probe": "sklearn LogisticRegression C=1 (full "
                            "width too; SAEBench's full-width probe is a GPU probe)"}


def _config_of(block, name: str) -> dict:
  c = block.to_dict() if hasattr(block, "to_dict") else dict(block)
  part = {"core": c["core"], "absorption": c["absorption"], "sparse_probing": c["probing"]}
  return {**part[name], "saebench_definitions": saebench.SAEBENCH_COMMIT}


def run_evals(lm, sae, hookpoint: str, packed, evals, outdir: str, block, sae_id: str,
              model_name: str, tasks: dict | None = None, log=None) -> dict:
  """Each eval in `evals` of one dictionary, written as SAEBench JSON (skipped when its file
  exists); returns {eval name: path}. tasks: check()'s probing tasks (built when None)."""
  names = saebench.check_eval_names(evals)
  release = str(block.release)
  cfg = saebench.sae_cfg_dict(sae, model_name, hookpoint, int(packed.input_ids.shape[1]))
  out = {}
  for name in names:
    type_id = saebench.EVALS[name]
    path = saebench.result_path(outdir, type_id, sae_id, release)
    out[name] = path
    if os.path.exists(path):
      continue
    if name == "core":
      metrics, details, extra = core_eval(lm, sae, hookpoint, packed, block)
    elif name == "absorption":
      r = absorption_eval(lm, sae, hookpoint, block)
      metrics, details = r["metrics"], r["details"]
      extra = {"probe_f1": r["probe_f1"], "n_words": r["n_words"],
               "status": ("aborted: fewer than min_letters letters reached the probe F1 "
                          "threshold" if r["aborted"] else "ok")}
    else:
      if tasks is None:
        tasks = probing_tasks(block, lm.tokenizer)
      metrics, details, extra = probing_eval(lm, sae, hookpoint, tasks, block)
    result = saebench.envelope(type_id, _config_of(block, name), metrics, details, extra, cfg,
                               sae_id, release)
    saebench.write_result(path, result)
    if log is not None:
      log(f"{name}: {json.dumps(saebench.clean(metrics))[:300]}")
  return out
