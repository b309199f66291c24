"""Estimator benchmark: k-NN entropy + TwoNN + MLE against scikit-learn and scikit-dimension.

  python -m launch.benchmark --config=configs/bench/estimators.py [--out=estimators_bench.json]
  python -m launch.benchmark --config=configs/bench/estimators.py:small   (N = 4,000)
  python -m launch.benchmark --config=configs/bench/estimators.py:tiny    (seconds; CI)

Same points for every contender (N = 20,000 in d = 64 by default), ratios of median times
measured in the same run: ours (one blocked exact neighbour search, k = 20, feeding the
three formulas; and the three public functions called separately) against scikit-learn
NearestNeighbors with the same formulas in NumPy, and against skdim.id.TwoNN +
skdim.id.MLE. Also the largest N whose neighbour search fits in `budget_gib` per device,
from the memory model in jaxcode.estimators.knn, checked against XLA's compiled buffer
sizes at that N.
"""

import ml_collections

VARIANTS = {   # name: what it runs
    "default": "N = 20,000 points in d = 64 near a 12-dimensional subspace",
    "small": "N = 4,000: a quick laptop check",
    "tiny": "N = 1,000 in d = 16: seconds (the CPU dry run)",
}


def get_config(arg: str | None = None):
  if arg not in (None, *VARIANTS):
    raise ValueError(f"variant {arg!r}: expected one of {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.benchmark = "estimators"    # jaxcode.bench.estimators
  c.n = 20000                   # points
  c.d = 64                      # ambient dimension
  c.latent = 12                 # the points lie near a random `latent`-dimensional subspace
  c.noise = 0.05                # isotropic noise std added in all d dimensions
  c.k_entropy = 1               # k of the Kozachenko-Leonenko entropy
  c.k_mle = 20                  # neighbours of the Levina-Bickel MLE (skdim default)
  c.discard_fraction = 0.1      # TwoNN discard fraction (skdim default)
  c.seed = 0                    # data
  c.repeats = 3                 # timed repeats of our paths and scikit-learn (median)
  c.skdim_repeats = 1           # timed repeats of scikit-dimension (slow at d > 25)
  c.budget_gib = 4.0            # memory budget for the largest-N figure
  c.matmul_n = 2048             # size of the square matmul that measures the float32 rate
  if arg == "small":            # quick variant for a laptop check
    c.n = 4000
  elif arg == "tiny":           # seconds on 2 CPU cores (configs/bench/all.py:cpu_dry)
    c.n, c.d, c.latent = 1000, 16, 4
    c.repeats = 1
    c.budget_gib = 0.05
    c.matmul_n = 256
  return c.lock()
