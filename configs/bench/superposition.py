"""Toy-superposition sweep: jitted vmapped JAX against a per-instance NumPy loop.

  python -m launch.benchmark --config=configs/bench/superposition.py
  python -m launch.benchmark --config=configs/bench/superposition.py:tiny    (seconds; CI)
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: what it runs
    "default": "the feature_geometry sweep: 20 ReLU instances, 200 features in 20 dimensions",
    "tiny": "4 instances, 20 features in 4 dimensions, a few steps: seconds (the CPU dry run)",
}


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict(dict(
      benchmark="superposition",  # jaxcode.bench.<name>
      n=200,                      # features (feature_geometry)
      m=20,                       # hidden dimensions (feature_geometry)
      instances=20,               # sparsities S_k = 1 - 20^(-k/(instances-1)), one ReLU model each
      steps=200,                  # timed JAX sweep steps (after one compile step)
      reference_steps=20,         # timed NumPy steps per instance
      batch=1024,                 # the notebook's batch
      matmul_n=1024,              # size of the square matmul that measures the float32 rate
      optim=dict(name="adamw", lr=1e-3, schedule="constant", weight_decay=0.01,  # notebook's
                 b1=0.9, b2=0.999, eps=1e-8),
  ))
  if variant == "tiny":
    c.n, c.m, c.instances = 20, 4, 4
    c.steps, c.reference_steps, c.batch = 5, 2, 64
    c.matmul_n = 256
  return c.lock()
