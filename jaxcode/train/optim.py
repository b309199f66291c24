"""Learning-rate schedules, gradient clipping and optimizers built from config."""

from __future__ import annotations

import optax

from jaxcode.parallel import ConfigError

SCHEDULES = ("constant", "cosine", "linear", "warmup_constant", "warmup_cosine", "warmup_linear")
OPTIMIZERS = ("adam", "adamw", "sgd")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """lr(step) from cfg.{lr, schedule, warmup_steps, final_lr_fraction}.

  `warmup_*` ramps linearly from 0 over warmup_steps, then follows the named decay;
  `cosine` and `linear` decay from lr to lr * final_lr_fraction at total_steps.
  """
  lr = float(cfg.lr)
  name = cfg.schedule
  warm = int(cfg.get("warmup_steps", 0))
  final = lr * float(cfg.get("final_lr_fraction", 0.0))
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule={name!r}: expected one of {SCHEDULES}")
  if lr <= 0:
    raise ConfigError(f"optim.lr={lr}: expected a positive learning rate")
  if warm < 0 or warm >= max(total_steps, 1) and name.startswith("warmup"):
    raise ConfigError(f"optim.warmup_steps={warm}: expected 0 <= warmup_steps < steps={total_steps}")
  base = name.replace("warmup_", "")
  decay_steps = max(total_steps - (warm if name.startswith("warmup") else 0), 1)
  if base == "constant":
    body = optax.constant_schedule(lr)
  elif base == "cosine":
    body = optax.cosine_decay_schedule(lr, decay_steps, alpha=final / lr)
  else:
    body = optax.linear_schedule(lr, final, decay_steps)
  if not name.startswith("warmup") or warm == 0:
    return body
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), body], [warm])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """Optimizer from cfg.{name, lr, schedule, b1, b2, eps, weight_decay, clip_norm}."""
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={cfg.name!r}: expected one of {OPTIMIZERS}")
  sched = make_schedule(cfg, total_steps)
  if cfg.name == "adam":
    opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    opt = optax.sgd(sched, momentum=cfg.get("momentum", None) or None)
  clip = float(cfg.get("clip_norm", 0.0) or 0.0)
  if clip < 0:
    raise ConfigError(f"optim.clip_norm={clip}: expected >= 0 (0 disables clipping)")
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt
