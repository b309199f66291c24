"""The feature-atlas table: per residual-stream layer of a language model, intrinsic
dimension, eigenspectrum power law and the four properties of concept representations.

run(config, workdir) writes workdir/{config.json, results.json, figures/*.png}: a thin
composition of the four-properties stage (jaxcode.pipeline.four_properties, which documents
the table) on the model `config.model` (resolved and loaded by jaxcode.pipeline.model).
The config's top level is the stage's block (configs/four_properties.py:stage_block) plus
model, revision and sae_paths: one SAELens export per analysed layer (embed, then each
block), in layer order, '' for none; () for no SAEs (their columns are reported None).
"""

from __future__ import annotations

from jaxcode import workdir as workdir_lib
from jaxcode.pipeline import four_properties as stage
from jaxcode.pipeline import model as model_lib


def validate(config, workdir: str) -> None:
  """Checks that need nothing loaded."""
  stage.validate(config)
  stage.load_concepts(config)                    # unreadable concept files: one line
  workdir_lib.check_workdir(workdir)


def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "four_properties", lambda: _run(config, workdir))


def _run(config, workdir: str) -> dict:
  validate(config, workdir)
  spec = model_lib.resolve(config.model, config.revision)
  lm = model_lib.load(spec)
  saes = stage.saes_from_paths(config.sae_paths, lm.n_layers + 1, lm.d_model)
  from jaxcode.report import four_properties as report
  return stage.run(lm, saes, config, workdir, name=spec.spec, figures=report.write_all)
