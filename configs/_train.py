"""The training loop's config fields (jaxcode.train.loop), declared once, with defaults.

Every training experiment's config embeds this block (`c = default_train_config()`); the
loop reads these fields. Standard library and ml_collections only, like every config.
"""

from ml_collections import ConfigDict


def default_train_config() -> ConfigDict:
  """The loop's config fields with defaults, to embed in an experiment config."""
  c = ConfigDict()
  c.seed = 0                 # seeds init, data and per-step RNG
  c.steps = 1000             # total optimizer updates
  c.log_every = 100          # metrics.jsonl / progress line interval (steps)
  c.mesh = ConfigDict(dict(
      data=-1,               # devices on the data / instance axis (-1: the rest)
      model=1))              # devices on the model axis
  c.checkpoint = ConfigDict(dict(
      every=500,             # save interval (steps); also saved at the end and on SIGTERM
      keep=2,                # checkpoints kept
      async_save=True))      # orbax background writes
  c.optim = ConfigDict(dict(
      name="adam",           # adam | adamw | sgd
      lr=1e-3,               # peak learning rate
      schedule="constant",   # constant | cosine | linear | warmup_constant | warmup_cosine | warmup_linear
      warmup_steps=0,        # linear warm-up length for warmup_* schedules
      final_lr_fraction=0.0,  # end of cosine / linear decay as a fraction of lr
      b1=0.9, b2=0.999, eps=1e-8,  # Adam moments
      weight_decay=0.0,      # AdamW decoupled decay
      momentum=0.0,          # SGD momentum (0: none)
      clip_norm=0.0))        # global-norm gradient clipping (0: off)
  c.distributed = ConfigDict(dict(
      enabled=False,         # call jax.distributed.initialize before touching devices
      coordinator_address="",  # host:port of process 0 ('' : auto-detect on TPU/SLURM/k8s)
      num_processes=0,       # with coordinator_address
      process_id=0))         # with coordinator_address
  return c
