"""Toy models of superposition (Elhage et al. 2022), variants by argument.

  python -m launch.superposition --config=configs/superposition.py:seed40 --workdir=/tmp/tms40
  python -m launch.superposition --config=configs/superposition.py:feature_geometry --workdir=/tmp/tmsfg
  python -m launch.superposition --config=configs/superposition.py:phase --workdir=/tmp/tmsphase
  python -m launch.superposition --config=configs/superposition.py:post --workdir=/tmp/tmspost

Override any field on the command line, e.g. --config.steps=2000 --config.toy.seeds=3.
The optimiser follows the released notebook: AdamW, lr 1e-3 constant, weight decay 0.01
(PyTorch's default), batch 1024, 10,000 steps, xavier-normal init, b = 0.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config

VARIANTS = {   # name: what it runs
    "seed40": "40 features (importance 1 -> 0.1) in 5 dimensions, linear and ReLU, "
              "S = 0.1 / 0.5 / 0.9",
    "feature_geometry": "200 features in 20 dimensions, uniform importance, 20 sparsities, ReLU",
    "phase": "the two-feature phase diagram: 12 x 12 cells x 4 seeds against the theoretical one",
    "tiny": "8 features in 2 dimensions, 200 steps: seconds; what the tests run",
    "post": "the toy-superposition post: seed40's setting with its hidden-ReLU model "
            "h = ReLU(W x), x' = ReLU(W^T h + b), W ~ N(0, 1/n), beside linear and ReLU",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("steps", "optimizer updates"),
    ("toy.n", "features"),
    ("toy.m", "hidden dimensions"),
    ("toy.sparsities", "S values trained side by side"),
    ("toy.seeds", "independent instances per (model, sparsity)"),
    ("optim.lr", "learning rate"),
)


def _logspace(start: float, stop: float, num: int) -> list[float]:
  """numpy.logspace without numpy (configs import only the standard library): the same
  float operations, the last exponent set to `stop` exactly."""
  step = (stop - start) / (num - 1)
  return [10.0 ** (stop if i == num - 1 else i * step + start) for i in range(num)]


def get_config(variant: str = "seed40") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.variant = variant          # the name written into results.json
  c.steps = 10_000
  c.log_every = 500
  c.checkpoint.every = 2_000
  c.mesh.data = 1              # the batch axis of every instance
  c.mesh.model = -1            # the instance axis: instances are split over all devices
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.01
  c.toy = ConfigDict(dict(
      n=40,                    # features
      m=5,                     # hidden dimensions
      importance="linear",     # linear (importance_max -> importance_min) | uniform | geometric
      importance_max=1.0,      # first feature's importance (linear)
      importance_min=0.1,      # last feature's importance (linear)
      importance_decay=0.9,    # I_i = decay^i (geometric)
      sparsities=(0.1, 0.5, 0.9),  # S: probability that a feature is zero
      models=("linear", "relu"),   # trained side by side: linear | relu | hidden_relu
      seeds=1,                 # independent instances per (model, sparsity)
      batch=1024,              # samples per instance per step
      init_std=0.0,            # 0: xavier std sqrt(2 / (n m + L m)) (L = #sparsities) for
                               # linear/relu, the post's sqrt(1 / n) for hidden_relu
      relative_importance=(),  # phase diagram only: importance of feature 2 (feature 1 has 1)
  ))
  if variant == "feature_geometry":
    c.toy.n, c.toy.m = 200, 20
    c.toy.importance = "uniform"
    c.toy.sparsities = tuple(float(1.0 - 20.0 ** (-k / 19)) for k in range(20))
    c.toy.models = ("relu",)
  elif variant == "phase":
    c.toy.n, c.toy.m = 2, 1
    c.toy.importance = "uniform"
    c.toy.models = ("relu",)
    c.toy.sparsities = tuple(float(1.0 - d) for d in _logspace(-2, 0, 12))
    c.toy.relative_importance = tuple(float(r) for r in _logspace(-1, 1, 12))
    c.toy.seeds = 4            # per cell the seed with the lowest exact expected loss is kept
    c.steps = 4_000
    c.checkpoint.every = 1_000
  elif variant == "post":     # AdamW recipe as seed40 (the post's optimiser is not recorded)
    c.toy.models = ("linear", "relu", "hidden_relu")
  elif variant == "tiny":      # seconds on a laptop; what the tests run
    c.toy.n, c.toy.m = 8, 2
    c.toy.sparsities = (0.0, 0.9)
    c.toy.batch = 64
    c.steps = 200
    c.log_every = 50
    c.checkpoint.every = 50
  return c
