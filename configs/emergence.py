"""Offline NeuroMFA emergence: a small GPT-2 trained on the default corpus, E(t) vs the null.

  python -m launch.emergence --config=configs/emergence.py --workdir=/tmp/emergence
  python -m launch.emergence --config=configs/emergence.py:tiny --workdir=/tmp/emergence_tiny

Then analyse the same run with other settings:
  python -m launch.neuromfa --config=configs/neuromfa.py --workdir=/tmp/emergence_mfa \
      --config.S=32 --config.checkpoints='("orbax:/tmp/emergence",)'
Default: ~5 minutes on 2 CPU cores (d_model 64, 2 blocks, 512 steps of 16 x 64 tokens).

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs.neuromfa import stage_block as neuromfa_block
from configs._train import default_train_config

VARIANTS = {   # name: what it trains
    "default": "GPT-2 with d_model 64, 2 blocks, 512 steps of 16 x 64 tokens (~5 minutes)",
    "tiny": "d_model 16, 1 block, 8 steps: seconds; what the tests run",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("steps", "total updates"),
    ("model.d_model", "residual width"),
    ("model.n_layers", "blocks"),
    ("data.batch", "sequences per step"),
    ("neuromfa.S", "sampled neurons per layer"),
)


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.variant = variant            # the name written into results.json
  c.steps = 512                  # total updates
  c.checkpoint_steps = ()        # () : 1, 2, 4, ..., steps (log-spaced); or explicit steps
  c.log_every = 64
  c.checkpoint.async_save = False
  c.optim.name = "adamw"
  c.optim.lr = 3e-3
  c.optim.schedule = "warmup_constant"
  c.optim.warmup_steps = 32
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0
  c.model = ConfigDict(dict(
      d_model=64,                # residual width (S <= d_model)
      n_layers=2,                # blocks
      n_heads=4,
      d_mlp=256,                 # MLP width (2S <= d_mlp)
      init_std=0.02))            # GPT-2's N(0, 0.02^2) kernels and embeddings
  c.data = ConfigDict(dict(
      seq_len=64,                # tokens per training sequence (also n_positions)
      batch=16,                  # sequences per step
      max_docs_per_source=300,   # default corpus: first n prose + n code documents (0: all)
      eval_sequences=64))        # held-out sequences for the eval loss
  nm = neuromfa_block()
  nm.S = 32                      # sampled neurons per layer
  nm.seeds = (0, 1, 2)           # index samples (means over them, as the released code)
  c.neuromfa = nm                # configs/neuromfa.py fields (mode, T, q range, multihop ...)
  if variant == "tiny":          # seconds; what the tests run
    c.steps = 8
    c.optim.warmup_steps = 2
    c.model.update(dict(d_model=16, n_layers=1, n_heads=2, d_mlp=32))
    c.data.update(dict(seq_len=16, batch=8, max_docs_per_source=3, eval_sequences=8))
    c.neuromfa.S = 8
    c.neuromfa.seeds = (0,)
  return c
