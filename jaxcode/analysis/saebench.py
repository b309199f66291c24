"""SAEBench-compatible evaluations: the output envelope, the eval registry and `core`.

SAEBench (adamkarvonen/SAEBench; definitions followed: commit 8042bb38, see
shared/notes/evals.md section 1) writes one JSON per (dictionary, eval) in a fixed envelope:

  eval_type_id, eval_config (every setting written out), eval_id (uuid4),
  datetime_epoch_millis, eval_result_metrics (category -> flat dict of scalars),
  eval_result_details (per-item rows or null), eval_result_unstructured (anything),
  sae_bench_commit_hash, sae_lens_id, sae_lens_release_id, sae_lens_version, sae_cfg_dict

in `{out}/{eval_type_id}/{release}_{sae_id}_eval_results.json` ('/' -> '_'), the layout of
SAEBench's eval_results folders; jaxcode/resources/saebench-schema.json is the schema our
files are checked against. `sae_bench_commit_hash` says the file was written by jaxcode's
port (SAEBench itself did not run).

Offered here (EVALS): core (this file), absorption (saebench_absorption: first-letter task on
the model's own vocabulary; needs a causal LM), sparse_probing (saebench_probing: offline
labelled tasks). NOT_OFFERED lists the evals that cannot run offline, with the reason, and
NOT_IMPLEMENTED the offline-capable ones not built yet (mdl, meta_structure); nothing is written
for either.

core, as SAEBench computes it, over the valid tokens (attended, not special) of batches of
`rows` packed rows (x the hookpoint activation, x_hat = decode(encode(x)), f the codes):

  l2_norm_in / l2_norm_out   mean ||x||, mean ||x_hat||
  l2_ratio                   mean ||x_hat|| / ||x|| (||x|| < 1e-4 counts as 1)
  relative_reconstruction_bias   per batch E||x_hat||^2 / E<x, x_hat>, mean over batches
  l0, l1                     mean #(f != 0), mean sum f (no absolute value)
  cossim                     mean cos(x, x_hat)
  explained_variance_legacy  mean over tokens of 1 - ||x - x_hat||^2 / ||x - mean_batch(x)||^2
                             (what the SAEBench paper reported)
  explained_variance         1 - sum ||x - x_hat||^2 / sum ||x - x_bar||^2, x_bar the global
                             per-dimension mean. SAEBench 8042bb38 measures this variance about
                             zero (SAELens #659); we write the corrected value under SAEBench's
                             key and say so in eval_result_unstructured.
  mse                        mean over tokens of ||x - x_hat||^2 / (#valid tokens in its batch)
                             (SAEBench's batch-size-dependent definition; batch = `rows` rows);
                             mse_per_element = sum ||x - x_hat||^2 / (N d) beside it
  model_behavior_preservation / model_performance_preservation   (causal LMs only) the three
      forwards of jaxcode.analysis.spliced_eval: KL and CE clean / with the reconstruction /
      zero-ablated, kl_div_score = (KL_abl - KL_sae) / KL_abl, ce_loss_score = (CE_abl -
      CE_sae) / (CE_abl - CE_clean). A model without an LM head (MiniLM) has neither category;
      its sentence-embedding scores go to eval_result_unstructured.
  per latent (details)       feature_density, consistent_activation_heuristic (#firing tokens
      / #rows with a firing), encoder_bias, encoder_norm, encoder_decoder_cosine_sim,
      max_encoder_cosine_sim, max_decoder_cosine_sim; misc_metrics from them.
Undefined values are written as -1, as SAEBench's core does.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid

import numpy as np

from jaxcode.errors import ConfigError

SAEBENCH_COMMIT = "8042bb38"
PORT_HASH = f"jaxcode-port-of-saebench-{SAEBENCH_COMMIT}"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources",
                           "saebench-schema.json")
# our eval name: SAEBench's eval_type_id
EVALS = {"core": "core", "absorption": "absorption_first_letter",
         "sparse_probing": "sparse_probing"}
NEEDS_CAUSAL_LM = ("absorption",)   # ICL prompts read by a next-token model
NOT_OFFERED = {
    "scr": "needs LabHC/bias_in_bios and amazon_reviews (HF datasets) with a spurious attribute "
           "(gender, rating) labelled per text; no offline corpus carries a second label",
    "tpp": "needs the same labelled HF datasets as scr; our offline tasks (2-10 classes of single "
           "words or source labels) are too small for its per-class latent ablations to be "
           "comparable",
    "ravel": "needs adamkarvonen/ravel_prompts (HF) and a model that knows facts about 500 "
             "entities; the offline models are < 1B and were not checked against that filter",
    "autointerp": "needs a hosted LLM judge (gpt-4o-mini); a local judge would not be "
                  "comparable and none is tested here",
    "unlearning": "needs gated WMDP-bio data, MMLU and an instruct model >= 2B",
    "sparse_probing_sae_probes": "needs the sae-probes package's 140+ datasets (not installed, "
                                 "offline availability unknown)",
}
# offline-capable SAEBench evals not built yet (notes/evals.md 1.9, 1.10): said so, not faked
NOT_IMPLEMENTED = {
    "mdl": "offline-capable (a token stream and the codes) but not implemented in jaxcode yet",
    "meta_structure": "offline-capable (a meta-SAE trained on W_dec) but not implemented in "
                      "jaxcode yet",
}
DECIMALS = 10                       # per-latent detail rounding (SAEBench's)


def check_eval_names(names) -> tuple[str, ...]:
  """The requested evals (a comma-separated string or a sequence), checked: one line naming
  the first unknown or not-offered name."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = tuple(names)
  if not names:
    raise ConfigError(f"evals={names!r}: expected one or more of {', '.join(EVALS)}")
  for n in names:
    if n in NOT_OFFERED:
      raise ConfigError(f"eval {n!r} is not offered offline: {NOT_OFFERED[n]}")
    if n in NOT_IMPLEMENTED:
      raise ConfigError(f"eval {n!r}: {NOT_IMPLEMENTED[n]}")
    if n not in EVALS:
      raise ConfigError(f"eval {n!r}: expected one of {', '.join(EVALS)} (not offered: "
                        f"{', '.join(NOT_OFFERED)})")
  if len(set(names)) != len(names):
    raise ConfigError(f"evals={','.join(names)}: an eval is named twice")
  return names


def is_causal_lm(lm) -> bool:
  return bool(getattr(lm, "has_logits", False)) and lm.model_type != "bert"


def check_model_for(names, lm, model_name: str) -> None:
  """Evals that need a causal LM head refused on a model without one, before compute."""
  for n in names:
    if n in NEEDS_CAUSAL_LM and not is_causal_lm(lm):
      raise ConfigError(f"eval {n!r} needs a causal LM with an LM head; model {model_name!r} "
                        f"({lm.model_type}) has none: use gemma3-270m or smollm2-135m")


# ---------------------------------------------------------------- the envelope


def sae_cfg_dict(sae, model_name: str, hookpoint: str, context_size: int) -> dict:
  """The SAE Lens-style config SAEBench files carry."""
  layer = re.match(r"^blocks\.(\d+)\.", hookpoint)
  return {"d_in": int(sae.d_in), "d_sae": int(sae.d_sae), "architecture": str(sae.architecture),
          "dtype": "float32", "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input),
          "normalize_activations": "none", "model_name": model_name, "hook_name": hookpoint,
          "hook_layer": int(layer.group(1)) if layer else -1, "context_size": int(context_size),
          "prepend_bos": True, "dataset_path": "", "neuronpedia_id": None}


def envelope(eval_type_id: str, eval_config: dict, metrics: dict, details, unstructured,
             sae_cfg: dict, sae_id: str, release: str = "jaxcode") -> dict:
  """One SAEBench result; metrics must be category -> flat dict of scalars (checked)."""
  for cat, d in metrics.items():
    if not isinstance(d, dict) or any(isinstance(v, (dict, list)) for v in d.values()):
      raise ValueError(f"metrics category {cat!r}: expected a flat dict of scalars")
  return {"eval_type_id": eval_type_id, "eval_config": eval_config,
          "eval_id": str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
          "eval_result_metrics": metrics, "eval_result_details": details,
          "eval_result_unstructured": unstructured, "sae_bench_commit_hash": PORT_HASH,
          "sae_lens_id": sae_id, "sae_lens_release_id": release, "sae_lens_version": None,
          "sae_cfg_dict": sae_cfg}


def result_path(out: str, eval_type_id: str, sae_id: str, release: str = "jaxcode") -> str:
  name = f"{release}_{sae_id}_eval_results.json".replace("/", "_")
  return os.path.join(out, eval_type_id, name)


def clean(x):
  """JSON-ready: numpy scalars to Python, NaN/inf to -1 (SAEBench core's convention)."""
  if isinstance(x, dict):
    return {k: clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [clean(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    return -1.0 if not math.isfinite(x) else x
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_result(path: str, result: dict) -> str:
  """Atomic write (temp name, then rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(clean(result), f, indent=1)
  os.replace(tmp, path)
  return path


def load_schema() -> dict:
  with open(SCHEMA_PATH) as f:
    return json.load(f)


def validate_result(result: dict) -> None:
  """Raises jsonschema.ValidationError when `result` breaks saebench-schema.json."""
  import jsonschema
  jsonschema.validate(result, load_schema())


# ---------------------------------------------------------------- core


class CoreSums:
  """Running sums of core's reconstruction and sparsity metrics over valid tokens."""

  def __init__(self, d_in: int, d_sae: int):
    self.tok = {k: [] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio", "l0", "l1",
                                "explained_variance_legacy", "mse", "cossim")}
    self.rrb, self.n, self.err2, self.x2 = [], 0, 0.0, 0.0
    self.x_sum = np.zeros(d_in)
    self.fires = np.zeros(d_sae)
    self.fire_rows = np.zeros(d_sae)
    self.n_rows = 0

  def add(self, x, x_hat, f, row=None):
    """One batch of valid tokens: x, x_hat [N, D], f [N, M]; row [N] (packed row ids)."""
    x, x_hat, f = (np.asarray(v, np.float64) for v in (x, x_hat, f))
    if x.shape[0] == 0:
      return
    e2 = np.sum((x - x_hat) ** 2, -1)
    nx, nh = np.linalg.norm(x, axis=-1), np.linalg.norm(x_hat, axis=-1)
    t = self.tok
    t["l2_norm_in"].append(nx)
    t["l2_norm_out"].append(nh)
    t["l2_ratio"].append(nh / np.where(np.abs(nx) < 1e-4, 1.0, nx))
    t["l0"].append(np.sum(f != 0, -1).astype(np.float64))
    t["l1"].append(np.sum(f, -1))
    t["explained_variance_legacy"].append(1 - e2 / np.sum((x - x.mean(0)) ** 2, -1))
    t["mse"].append(e2 / x.shape[0])
    t["cossim"].append(np.sum(x * x_hat, -1) / (nx * nh))
    self.rrb.append(np.mean(nh ** 2) / np.mean(np.sum(x * x_hat, -1)))
    self.n += x.shape[0]
    self.err2 += float(e2.sum())
    self.x2 += float(np.sum(x * x))
    self.x_sum += x.sum(0)
    active = f > 0
    self.fires += active.sum(0)
    rows = np.zeros(x.shape[0], np.int64) if row is None else np.asarray(row)
    for r in np.unique(rows):
      self.fire_rows += active[rows == r].any(0)
    self.n_rows += len(np.unique(rows))

  def metrics(self) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
      out = {k: float(np.mean(np.concatenate(v))) for k, v in self.tok.items()}
      mean = self.x_sum / self.n
      total_var = self.x2 - self.n * float(mean @ mean)
      out["explained_variance"] = 1.0 - self.err2 / total_var
      out["mse_per_element"] = self.err2 / (self.n * mean.size)
      out["relative_reconstruction_bias"] = float(np.mean(self.rrb))
      density = self.fires / self.n
      cah = self.fires / self.fire_rows
    return out | {"feature_density": density, "consistent_activation_heuristic": cah}


def _unit_rows(w):
  return w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def latent_weights(sae) -> dict:
  """Per-latent weight statistics of an ExternalSAE (raw-unit arrays)."""
  from jaxcode.analysis import sae_eval
  from jaxcode.models import sae_io
  a = sae_io.external_raw_arrays(sae)
  w_enc_MD = np.asarray(a["W_enc"], np.float64).T
  w_dec_MD = np.asarray(a["W_dec"], np.float64)
  out = {"encoder_bias": np.asarray(a["b_enc"], np.float64),
         "encoder_norm": np.linalg.norm(w_enc_MD, axis=-1),
         "max_encoder_cosine_sim": sae_eval.decoder_max_cosine(w_enc_MD)["per_latent"],
         "max_decoder_cosine_sim": sae_eval.decoder_max_cosine(w_dec_MD)["per_latent"]}
  if w_enc_MD.shape[1] == w_dec_MD.shape[1]:
    out["encoder_decoder_cosine_sim"] = np.sum(_unit_rows(w_enc_MD) * _unit_rows(w_dec_MD), -1)
  else:
    out["encoder_decoder_cosine_sim"] = np.full(w_dec_MD.shape[0], np.nan)
  return out


LATENT_FIELDS = ("feature_density", "consistent_activation_heuristic", "encoder_bias",
                 "encoder_norm", "encoder_decoder_cosine_sim", "max_encoder_cosine_sim",
                 "max_decoder_cosine_sim")


def core_result_parts(m: dict, weights: dict, spliced: dict | None,
                      n_tokens: int) -> tuple[dict, list, dict]:
  """(metrics by category, per-latent rows, unstructured) from CoreSums.metrics(),
  latent_weights() and a spliced_eval result (causal or embedding mode, or None)."""
  density = m["feature_density"]
  tot = max(float(density.sum()), 1e-30)
  cats = {
      "reconstruction_quality": {k: m[k] for k in ("explained_variance",
                                                   "explained_variance_legacy", "mse",
                                                   "cossim", "mse_per_element")},
      "shrinkage": {k: m[k] for k in ("l2_norm_in", "l2_norm_out", "l2_ratio",
                                      "relative_reconstruction_bias")},
      "sparsity": {"l0": m["l0"], "l1": m["l1"]},
      "token_stats": {"total_tokens_eval_reconstruction": int(n_tokens),
                      "total_tokens_eval_sparsity_variance": int(n_tokens)},
      "misc_metrics": {
          "frac_alive": float(np.mean(density > 0)),
          "freq_over_1_percent": float(np.mean(density > 0.01)),
          "freq_over_10_percent": float(np.mean(density > 0.1)),
          "normalized_freq_over_1_percent": float(density[density > 0.01].sum() / tot),
          "normalized_freq_over_10_percent": float(density[density > 0.1].sum() / tot),
          "average_max_encoder_cosine_sim": float(np.mean(weights["max_encoder_cosine_sim"])),
          "average_max_decoder_cosine_sim": float(np.mean(weights["max_decoder_cosine_sim"]))}}
  unstructured = {"explained_variance_note": "corrected definition (variance about the "
                  "global mean); SAEBench 8042bb38 measures it about zero (SAELens #659)"}
  if spliced is not None and spliced.get("mode") in ("causal", "mlm"):
    cats["model_behavior_preservation"] = {
        "kl_div_score": spliced["kl_score"], "kl_div_with_ablation": spliced["kl_zero"],
        "kl_div_with_sae": spliced["kl_sae"]}
    cats["model_performance_preservation"] = {
        "ce_loss_score": spliced["ce_recovered"], "ce_loss_with_ablation": spliced["ce_zero"],
        "ce_loss_with_sae": spliced["ce_sae"], "ce_loss_without_sae": spliced["ce_clean"]}
  elif spliced is not None:
    unstructured["embedding_preservation"] = {k: spliced[k] for k in (
        "cos_sae", "cos_zero", "embedding_recovered", "n_sequences")}
  per = {"feature_density": density,
         "consistent_activation_heuristic": m["consistent_activation_heuristic"], **weights}
  rows = [{"index": i, **{k: round(float(per[k][i]), DECIMALS) if np.isfinite(per[k][i])
                          else -1.0 for k in LATENT_FIELDS}} for i in range(len(density))]
  return cats, rows, unstructured
