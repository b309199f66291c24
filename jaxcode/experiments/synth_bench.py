"""A ground-truth SAE benchmark after SynthSAEBench (configs/synth_bench.py).

run(config, workdir): the generator of config.synth (jaxcode.data.synth_features) feeds the
SAE stage (jaxcode.pipeline.sae: the shared training loop, orbax checkpoints, SAELens export)
once per architecture of config.architectures, in workdir/saes/<arch>/; then each exported SAE
is scored against the ground truth (jaxcode.analysis.synth_metrics) on held-out samples, in
workdir/saes/<arch>/synth.json; workdir/results.json holds the table (MCC, F1, uniqueness,
explained variance, L0 per architecture, the published numbers beside) and the orderings,
figures/ the bar charts (jaxcode.report.synth_bench).  Every stage is skipped when complete;
a rerun resumes from the last checkpoint, and a finished run returns its results at once.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import synth_metrics
from jaxcode.data import synth_features
from jaxcode.errors import ConfigError
from jaxcode.models import sae as sae_lib
from jaxcode.models import sae_io
from jaxcode.pipeline import sae as sae_stage
from jaxcode.pipeline import stage
from jaxcode.train import checkpoint as ckpt_lib

# The training-loop and SAE-stage fields every architecture's block shares.
TRAIN_FIELDS = ("seed", "steps", "log_every", "mesh", "checkpoint", "optim", "distributed",
                "batch_size", "norm_sample_tokens", "eval")
METRICS = ("f1", "mcc", "uniqueness", "explained_variance")
# Published SynthSAEBench-16k, width 4096, mean over 5 seeds (notes/evals.md 3.4), per L0.
PUBLISHED = {
    25: {"BatchTopK": (0.7316, 0.7574, 0.9837, 0.7923), "Matryoshka": (0.8793, 0.7927, 0.9987, 0.7792),
         "MatchPursuit": (0.4464, 0.6930, 0.8281, 0.8351), "Standard L1": (0.5562, 0.6039, 0.8976, 0.7654),
         "JumpReLU": (0.7317, 0.7527, 0.9885, 0.7951)},
    20: {"BatchTopK": (0.8183, 0.7526, 0.9760, 0.7889), "Matryoshka": (0.8601, 0.7455, 0.9874, 0.7699),
         "MatchPursuit": (0.4439, 0.6748, 0.7552, 0.8267), "Standard L1": (0.5777, 0.5834, 0.8528, 0.7501),
         "JumpReLU": (0.8241, 0.7434, 0.9781, 0.7906)},
}
# Our architecture -> the published row it corresponds to (None: not in the published table).
PUBLISHED_NAME = {"relu": "Standard L1", "relu_classic": "Standard L1", "topk": None,
                  "batchtopk": "BatchTopK", "jumprelu": "JumpReLU", "jumprelu_tanh": None,
                  "matryoshka": "Matryoshka"}
PUBLISHED_SCALE = {"n_features": 16384, "d_hidden": 768, "width": 4096, "l0": 25,
                   "samples": 200_000_000, "true_l0": 34}


def block(config, arch: str) -> ConfigDict:
  """The SAE stage's block of one architecture: the shared training fields and its sae."""
  d = {f: config[f] for f in TRAIN_FIELDS}
  d["sae"] = config.saes[arch]
  return ConfigDict(d)


def validate(config, workdir: str | None, mesh=None) -> synth_features.SynthSpec:
  """Everything checkable before compute; returns the generator's spec."""
  spec = synth_features.spec_from_config(config.synth)
  archs = tuple(config.architectures)
  if not archs or len(set(archs)) != len(archs):
    raise ConfigError(f"architectures={archs}: expected a non-empty tuple without repeats")
  for a in archs:
    if a not in sae_lib.ARCHITECTURES or a not in config.saes:
      raise ConfigError(f"architectures: {a!r} is not an SAE architecture (expected one of "
                        f"{sae_lib.ARCHITECTURES})")
  for name, low in (("width", 1), ("l0", 1), ("metrics.samples", 2), ("metrics.batch_size", 1)):
    v = config[name] if "." not in name else config.metrics[name.split(".")[1]]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
      raise ConfigError(f"{name}={v!r}: expected an integer >= {low}")
  if config.l0 > config.width:
    raise ConfigError(f"l0={config.l0}: expected 0 < l0 <= width={config.width}")
  if mesh is None:
    data, model = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                              jax.device_count())
  else:
    data, model = mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL]
  for a in archs:
    sae_stage.validate(block(config, a), spec.d_hidden, data, model, where=f"saes.{a}.")
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
    for a in archs:
      ckpt_lib.check_directory(os.path.join(workdir, "saes", a, "checkpoints"))
  return spec


def _eval_batches(config, source):
  """Held-out (h, a) batches of the eval stream (config.metrics)."""
  m = config.metrics
  n, b = int(m.samples), int(m.batch_size)
  for i, start in enumerate(range(0, n, b)):
    yield source.pair(int(m.seed) + 2_000_003, i, min(b, n - start))


def score_export(config, source, path: str) -> dict:
  """The synthetic metrics of one exported SAE (SAELens layout) against the ground truth."""
  sae = sae_io.load_saelens(path)
  # Op by op, not jitted: a jit of a closure over this SAE's arrays would compile once per
  # SAE; the ops' own compilations are shared by every SAE of the same shapes.
  enc = lambda h: sae_io.encode(sae, h)
  dec = lambda f: sae_io.decode(sae, f)
  return synth_metrics.evaluate(enc, dec, sae.W_dec, source.params["dictionary"],
                                _eval_batches(config, source))


def _score_arch(config, source, folder: str, trained: dict) -> dict:
  """Scores every SAE the stage trained (a coefficient sweep: each) and picks the one whose
  L0 is nearest the target."""
  runs = []
  n = len(trained["saes"])
  for i, rec in enumerate(trained["saes"]):   # the stage's export names (pipeline/sae.py)
    s = score_export(config, source,
                     os.path.join(folder, "export", "sae" if n == 1 else f"sae_{i}"))
    s.update(label=rec["label"], k=rec["k"], sparsity_coef=rec["sparsity_coef"])
    runs.append(s)
  best = min(range(len(runs)), key=lambda i: abs(runs[i]["sae_l0"] - float(config.l0)))
  return {"architecture": trained["architecture"], "chosen": best, "runs": runs,
          **{k: runs[best][k] for k in METRICS + ("sae_l0", "true_l0", "precision", "recall",
                                                  "dead_latents", "shrinkage")}}


def _train_and_score(config, workdir: str, source, mesh, arch: str) -> dict:
  folder = os.path.join(workdir, "saes", arch)
  trained = sae_stage.train_saes(block(config, arch), folder, source, mesh)
  return stage.run_stage(f"synth_metrics {arch}", folder,
                         lambda: _score_arch(config, source, folder, trained),
                         final="synth.json")


def published_rows(l0: int) -> dict:
  """{name: {f1, mcc, uniqueness, explained_variance}} of the published table at L0 = l0
  (25 or 20)."""
  return {k: dict(zip(METRICS, v)) for k, v in PUBLISHED[l0].items()}


def _ordering(rows: list[dict], key: str) -> list[str]:
  return [r["architecture"] for r in sorted(rows, key=lambda r: -r[key])]


def summarise(config, spec, scored: list[dict]) -> dict:
  """results.json: the table, the published rows beside, orderings, the scale ratios."""
  pub = published_rows(25)
  rows = []
  for s in scored:
    name = PUBLISHED_NAME[s["architecture"]]
    rows.append({"architecture": s["architecture"], "published_name": name,
                 **{k: s[k] for k in METRICS + ("sae_l0", "precision", "recall",
                                                "dead_latents", "shrinkage")},
                 "published": pub.get(name), "runs": [
                     {k: u[k] for k in ("label", "sae_l0", "f1", "mcc")} for u in s["runs"]]})
  true_l0 = float(np.mean([s["true_l0"] for s in scored]))
  pub_order = {k: [n for n, _ in sorted(pub.items(), key=lambda kv: -kv[1][k])]
               for k in ("f1", "mcc")}
  n_samples = int(config.steps) * int(config.batch_size)
  return {
      "experiment": "synth_bench", "variant": config.variant, "table": rows,
      "target_l0": int(config.l0), "true_l0": true_l0,
      "ordering": {"f1": _ordering(rows, "f1"), "mcc": _ordering(rows, "mcc"),
                   "published_f1": pub_order["f1"], "published_mcc": pub_order["mcc"]},
      "published": {"l0": 25, "rows": pub, "scale": PUBLISHED_SCALE},
      "scale": {"n_features": spec.n_features, "d_hidden": spec.d_hidden,
                "width": int(config.width), "samples": n_samples,
                "ratio_to_published": {
                    "n_features": spec.n_features / PUBLISHED_SCALE["n_features"],
                    "d_hidden": spec.d_hidden / PUBLISHED_SCALE["d_hidden"],
                    "width": int(config.width) / PUBLISHED_SCALE["width"],
                    "samples": n_samples / PUBLISHED_SCALE["samples"]}}}


def run(config, workdir: str, mesh=None) -> dict:
  """Trains and scores every architecture, writes results.json and the figures."""
  from jaxcode.report import synth_bench as report
  parallel.maybe_initialize_from_config(config.distributed)
  spec = validate(config, workdir, mesh)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)

  def compute() -> dict:
    source = synth_features.SynthSource(spec, seed=int(config.synth.stream_seed))
    scored = [_train_and_score(config, workdir, source, mesh, a) for a in config.architectures]
    out = summarise(config, spec, scored)
    if parallel.is_main_process():
      out["figures"] = report.write_all(out, os.path.join(workdir, "figures"))
      workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
    return out

  return workdir_lib.run_owned(workdir, config, "synth_bench", compute)
