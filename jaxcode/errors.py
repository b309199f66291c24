"""The exceptions every layer raises, and the shared checks of config values (layer 0).

ConfigError is bad input: launch mains print it as one line `error: ...` and exit 2, before
any compute. Preempted is a signal-triggered stop after a checkpoint (exit 143, rerun to
resume); NonFiniteError a NaN/Inf metric (exit 1). The validators raise ConfigError naming
the field as the user types it and what was expected.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


class ConfigError(ValueError):
  """A bad configuration or input, reported in one line before any compute."""


class Preempted(Exception):
  """Raised after a signal-triggered checkpoint; rerunning the command resumes."""

  def __init__(self, step: int, signum: int, message: str | None = None):
    super().__init__(message or f"stopped by signal {signum} at step {step}; checkpoint saved, "
                     "rerun the same command to resume")
    self.step, self.signum = step, signum


class NonFiniteError(FloatingPointError):
  """A metric became NaN or Inf; the message names the step and the metric."""


def positive_int(name: str, value, low: int = 1) -> int:
  """`value` as an int >= low (1: a positive integer); bools and floats are refused."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    raise ConfigError(f"{name}={value!r}: expected {what}")
  return int(value)


def finite(name: str, value, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
  """`value` as a finite float in [low, high] (or (low, high] with low_open)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = float("nan")
  bad = (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
         or (high is not None and v > high))
  if bad:
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"<= {high:g}"
    rng = " and ".join(p for p in (lo, hi) if p)
    raise ConfigError(f"{name}={value!r}: expected a finite number{' ' + rng if rng else ''}")
  return v


def increasing(name: str, values: Sequence[float], minimum_length: int = 1) -> np.ndarray:
  """`values` as a float array of finite, strictly increasing numbers."""
  a = np.asarray(values, np.float64).ravel()
  if a.size < minimum_length or not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
    shown = a.tolist()[:8]
    raise ConfigError(f"{name}={shown}{'...' if a.size > 8 else ''}: expected at least "
                      f"{minimum_length} finite, strictly increasing values")
  return a
