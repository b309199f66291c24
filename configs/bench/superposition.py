"""Toy-superposition sweep: jitted vmapped JAX against a per-instance NumPy loop.

  python -m launch.benchmark --config=configs/bench/superposition.py
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  return ConfigDict(dict(
      benchmark="superposition",  # jaxcode.bench.<name>
      steps=200,                  # timed JAX sweep steps (after one compile step)
      reference_steps=20,         # timed NumPy steps per instance
      batch=1024,                 # the notebook's batch
  ))
