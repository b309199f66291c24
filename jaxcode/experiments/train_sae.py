"""Train one SAE or a vmapped sweep of SAEs on an activation source, evaluate, export.

run(config, workdir) checks the config, builds the source of config.data
(jaxcode.data.sources; a model for data.kind='lm' is resolved by jaxcode.pipeline.model) and
runs the SAE stage (jaxcode.pipeline.sae) on the whole workdir: workdir/{config.json,
metrics.jsonl, checkpoints/, results.json, figures/*.png (jaxcode.report.sae),
export/<name>/{cfg.json, sae_weights.safetensors}}; rerunning resumes from the last checkpoint.
"""

from __future__ import annotations

import os

import jax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.data import sources
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import sae as sae_stage
from jaxcode.train import checkpoint as ckpt_lib

def load_lm(spec: str):
  """data.kind='lm': the model of data.path ('minilm', a directory or a Hub id)."""
  return model_lib.load(model_lib.resolve(spec))


def build_source(data) -> sources.ActivationSource:
  """The source of config.data (its kind and fields, see configs/sae.py)."""
  return sources.from_config(data, load_lm=load_lm)


def validate(config, workdir: str | None, mesh=None):
  """Everything checkable before compute: returns (source, SAEConfig). `mesh` (default:
  config.mesh over all devices) gives the axis sizes d_sae and batch_size must fit."""
  sae_stage.validate_settings(config)
  src = build_source(config.data)
  if mesh is None:
    data, model = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                              jax.device_count())
  else:
    data, model = mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL]
  cfg = sae_stage.validate(config, src.d_in, data, model)
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
    ckpt_lib.check_directory(os.path.join(workdir, "checkpoints"))
  return src, cfg


def run(config, workdir: str, mesh=None, on_metrics=None) -> dict:
  """Trains, evaluates on held-out data, exports, draws the figures; returns the results."""
  from jaxcode.report import sae as figures
  parallel.maybe_initialize_from_config(config.distributed)
  src, _ = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  sae_stage.validate(config, src.d_in, mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL])
  return workdir_lib.run_owned(
      workdir, config, "train_sae",
      lambda: sae_stage.train_saes(config, workdir, src, mesh, on_metrics,
                                   figures=figures.write_all))
