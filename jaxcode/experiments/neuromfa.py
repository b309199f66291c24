"""NeuroMFA on given checkpoints: sampled neuron-interaction networks, spectra, nulls, E(t).

run(config, workdir) loads every checkpoint of config.checkpoints (a series of one
architecture; the specs, 'minilm' | 'hub:ID@REV' | 'orbax:RUN_DIR[@STEP]' | a local Hugging
Face directory, are documented in jaxcode.pipeline.neuromfa) and runs the NeuroMFA stage on
them with the config as its block, writing workdir/{config.json, results.json,
figures/spectra.png, figures/series.png}.
"""

from __future__ import annotations

from jaxcode import workdir as workdir_lib
from jaxcode.pipeline import neuromfa as stage


def validate(config, workdir: str) -> dict:
  """Every check before anything loads (the block, the specs' syntax and local paths);
  returns the spectrum keywords."""
  kw = stage.validate(config)
  for spec in config.checkpoints:
    stage.parse_spec(spec)
  workdir_lib.check_workdir(workdir)
  return kw


def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "neuromfa", lambda: _run(config, workdir))


def _run(config, workdir: str) -> dict:
  validate(config, workdir)
  labelled = stage.load_checkpoints(list(config.checkpoints))
  from jaxcode.report import neuromfa as report
  header = {"experiment": "neuromfa", "variant": config.get("variant", "")}
  return stage.run(labelled, config, workdir, header=header, figures=report.write_all)
