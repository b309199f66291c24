"""Activation extraction: model + corpus -> the chunked activation cache, resumable.

run(config, workdir) writes workdir/config.json, the cache workdir/activations/
(manifest.json, tokens/, one folder per hookpoint; see jaxcode.data.activations) and
workdir/results.json (token counts, tokens/s): the cache stage (jaxcode.pipeline.cache) run
on the whole workdir. Rerunning the same command keeps every complete chunk whose checksums
match and computes the rest, so a killed job (SIGTERM, SIGKILL, preemption) finishes where it
stopped. One process, data-parallel over its local devices.
"""

from __future__ import annotations

import os

import jax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import model as model_lib

CACHE = cache_lib.CACHE


def validate_settings(config, mesh=None) -> None:
  """Checks of the config alone (no files read); `mesh` overrides config.mesh."""
  if mesh is None:
    data, _ = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                          jax.device_count())
  else:
    data = mesh.shape[parallel.DATA]
  cache_lib.validate_block(config, config.hookpoints, data)


def run(config, workdir: str, mesh=None) -> dict:
  """Extracts (or finishes extracting) the configured activations into workdir/activations.

  `mesh` overrides config.mesh (tests use it to run on a subset of the devices).
  """
  validate_settings(config, mesh)
  cache_dir = os.path.join(workdir, CACHE)
  return workdir_lib.run_owned(workdir, config, "extract",
                               lambda: _load_and_cache(config, workdir, mesh),
                               still_valid=lambda: cache_lib.intact(cache_dir))


def _load_and_cache(config, workdir: str, mesh) -> dict:
  """Resolves and loads the model, then runs the cache stage on the workdir."""
  mesh = parallel.mesh_from_config(config.mesh) if mesh is None else mesh
  spec = model_lib.resolve(config.model, config.revision)
  lm = model_lib.load(spec, mesh=mesh, dtype=cache_lib.compute_dtype(config))
  return cache_lib.cache_activations(config, workdir, lm, spec, config.hookpoints, mesh)
