"""Learning-rate schedules, gradient clipping and optimizers built from config."""

from __future__ import annotations

import math

import optax

from jaxcode.errors import ConfigError

SCHEDULES = ("constant", "cosine", "linear", "warmup_constant", "warmup_cosine", "warmup_linear")
OPTIMIZERS = ("adam", "adamw", "sgd")


def _number(cfg, field: str, default: float, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = False) -> float:
  """cfg.field as a float inside [low, high] (ends open where asked); NaN and inf refused."""
  v = cfg.get(field, default)
  try:
    x = float(v if v is not None else default)
  except (TypeError, ValueError):
    x = math.nan
  above = x > low if low_open else x >= low
  below = x < high if high_open else x <= high
  if not (math.isfinite(x) and above and below):
    rng = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf else
           f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    raise ConfigError(f"optim.{field}={v!r}: expected a finite number {rng}")
  return x


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """lr(step) from cfg.{lr, schedule, warmup_steps, final_lr_fraction}.

  `warmup_*` ramps linearly from 0 over warmup_steps, then follows the named decay;
  `cosine` and `linear` decay from lr to lr * final_lr_fraction at total_steps.
  """
  name = cfg.schedule
  if name not in SCHEDULES:
    raise ConfigError(f"optim.schedule={name!r}: expected one of {SCHEDULES}")
  lr = _number(cfg, "lr", 0.0, 0.0, low_open=True)
  final = lr * _number(cfg, "final_lr_fraction", 0.0, 0.0)
  warm = int(cfg.get("warmup_steps", 0))
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
  if cfg.name != "sgd":
    for field, default in (("b1", 0.9), ("b2", 0.999)):
      _number(cfg, field, default, 0.0, 1.0, high_open=True)
    _number(cfg, "eps", 1e-8, 0.0)
  _number(cfg, "weight_decay", 0.0, 0.0)
  _number(cfg, "momentum", 0.0, 0.0, 1.0, high_open=True)
  if cfg.name == "adam":
    opt = optax.adam(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "adamw":
    opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    opt = optax.sgd(sched, momentum=cfg.get("momentum", None) or None)
  clip = _number(cfg, "clip_norm", 0.0, 0.0)   # 0 disables clipping
  return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt
