"""Metric writing (metrics.jsonl + TensorBoard), progress lines and the NaN/Inf guard."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from jaxcode.errors import NonFiniteError


def to_python(x: Any):
  a = np.asarray(x)
  if a.ndim == 0:
    v = a.item()
    return float(v) if isinstance(v, (float, np.floating)) else v
  return a.tolist()


def to_json(metrics: dict) -> dict:
  """Host metrics as JSON values (stored with each checkpoint)."""
  return {k: to_python(v) for k, v in metrics.items()}


def check_finite(step: int, metrics: dict, last_checkpoint=None) -> None:
  """Raises NonFiniteError naming the step and metric; `last_checkpoint()` gives the step of
  the newest checkpoint (or None), so the message says what is kept."""
  for name, value in metrics.items():
    a = np.asarray(value)
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
      bad = np.flatnonzero(~np.isfinite(a.ravel()))
      where = "" if a.ndim == 0 else f" (at flat index {int(bad[0])} of {a.size})"
      kept = last_checkpoint() if last_checkpoint is not None else None
      tail = (f"the last good checkpoint (step {kept}) is kept" if kept is not None
              else "no checkpoint was written yet")
      raise NonFiniteError(f"step {step}: metric '{name}' is {a.ravel()[bad[0]]}{where}; {tail}")


class MetricWriter:
  """Appends {'step': s, **metrics} to workdir/metrics.jsonl; scalars also to TensorBoard.

  Only process 0 writes. On resume, lines past the restored step are dropped so
  the file describes exactly one run history.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    self._truncate(resume_step)
    self._f = open(self.path, "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # TensorBoard files are optional; metrics.jsonl is not.
        self._tb = None

  def _truncate(self, resume_step: int) -> None:
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a kill
        if rec.get("step", 0) <= resume_step:
          keep.append(json.dumps(rec))
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(k + "\n" for k in keep))
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step)}
    rec.update({k: to_python(v) for k, v in metrics.items()})
    self._f.write(json.dumps(rec) + "\n")
    self._f.flush()
    if self._tb is not None:
      for k, v in rec.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._f.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """One line per report: step, rate, ETA and a few scalar metrics (process 0 only)."""

  def __init__(self, total: int, start: int, enabled: bool = True, stream=sys.stderr,
               label: str = "train"):
    self.total, self.start, self.enabled, self.stream, self.label = total, start, enabled, stream, label
    self.t0 = time.perf_counter()

  def report(self, step: int, metrics: dict | None = None) -> str:
    done = step - self.start
    dt = time.perf_counter() - self.t0
    rate = done / dt if dt > 0 and done > 0 else float("nan")
    eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
    parts = [f"[{self.label}] step {step}/{self.total}", f"{rate:.2f} steps/s",
             f"ETA {format_seconds(eta)}"]
    for k, v in (metrics or {}).items():
      a = np.asarray(v)
      if a.ndim == 0 and a.dtype.kind in "fi":
        parts.append(f"{k}={float(a):.5g}")
    line = "  ".join(parts)
    if self.enabled:
      print(line, file=self.stream, flush=True)
    return line


def format_seconds(s: float) -> str:
  if not s == s or s == float("inf"):
    return "--:--"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
