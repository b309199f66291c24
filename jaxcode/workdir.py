"""One workdir, one config, one owner: the contract every run keeps with its directory.

`owned(workdir, config, name)` wraps a run:
- an exclusive lock (`workdir/.lock`, flock: released by the kernel when the process dies,
  so a SIGKILLed run never leaves a stale lock); a second process on the same workdir is
  refused in one line naming the holder;
- the config is compared with the `config.json` an earlier run left: a rerun that differs
  in any field that can change results is refused in one line naming the first such field.
  Fields that cannot change results may differ: progress output and logging intervals,
  checkpoint cadence and retention, the device mesh and multi-host settings (resumption
  on another mesh is supported), and `steps` when the learning-rate schedule is constant
  (extending a run); the new values are then recorded;
- `finished.json`, written when the run completes, makes a rerun of the same command a
  no-op that says where the results are; it is removed when a run starts, so a run killed
  part-way is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from jaxcode import faults
from jaxcode.errors import ConfigError

CONFIG = "config.json"
FINISHED = "finished.json"
LOCK = ".lock"
# Config blocks / fields (by name, at any depth) that cannot change a run's results.
NEUTRAL = ("progress", "log_every", "checkpoint", "mesh", "distributed", "verbose")
# Schedules under which a longer run equals a continued shorter one.
EXTENDABLE = ("constant", "warmup_constant")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def _neutral(key: str, new: dict[str, Any], old: dict[str, Any], extend: bool) -> bool:
  if any(part in NEUTRAL for part in key.split(".")):
    return True
  if key == "steps" and extend:
    return (new.get("optim.schedule", "constant") in EXTENDABLE and
            old.get("optim.schedule", "constant") in EXTENDABLE)
  return False


def first_difference(old: dict, new: dict, extend: bool = True) -> str | None:
  """`field=old, this command has new` for the first field (in config order) that differs and
  can change results; None when there is none. extend=False counts `steps` as a difference
  (a longer run of a finished one is not finished)."""
  o, n = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
  for key in list(n) + [k for k in o if k not in n]:
    if o.get(key, "<absent>") != n.get(key, "<absent>"):
      if _neutral(key, n, o, extend):
        continue
      return f"{key}={o.get(key, '<absent>')!r}, this command has {n.get(key, '<absent>')!r}"
  return None


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return None   # cut off by a kill: treated as absent (it is rewritten)


def _clean(x: Any):
  """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None."""
  import numpy as np
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, np.ndarray):
    return _clean(x.tolist())
  if isinstance(x, (np.floating, float)):
    v = float(x)
    return v if math.isfinite(v) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def write_json(path: str, obj: Any) -> None:
  """Writes to a temporary name, then renames: never a half-written file."""
  if os.path.basename(path) == "results.json":
    faults.point("results")      # crash tests: killed after the work, before its results
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(_clean(obj), f, indent=1, allow_nan=False)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> str:
  """A text file (a page) written to a temporary name, then renamed; returns its path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def check_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable, before any compute."""
  if not workdir:
    raise ConfigError("--workdir is empty: expected a directory to write the run into")
  try:
    os.makedirs(workdir, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


@contextlib.contextmanager
def _lock(workdir: str) -> Iterator[None]:
  path = os.path.join(workdir, LOCK)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path) as f:
        holder = f.read().strip() or "another process"
      raise ConfigError(f"workdir {workdir} is in use by {holder}: wait for it to finish or "
                        "use another workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})").encode())
    yield
  finally:
    os.close(fd)   # releases the lock


class Run:
  """What `owned` yields: `finished` is the results path of a finished identical run;
  `finish()` marks this run finished (call it after the results are written)."""

  def __init__(self, workdir: str, config: dict, results: str, finished: bool, main: bool):
    self.workdir, self.config, self.main = workdir, config, main
    self.results_path = os.path.join(workdir, results)
    self.finished = self.results_path if finished else None

  def results(self) -> dict:
    with open(self.results_path) as f:
      return json.load(f)

  def finish(self) -> None:
    if self.main:
      write_json(os.path.join(self.workdir, FINISHED),
                 {"config": self.config, "results": os.path.basename(self.results_path),
                  "time": time.strftime("%Y-%m-%d %H:%M:%S")})


def _makedirs(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


@contextlib.contextmanager
def owned(workdir: str, config: dict, name: str, main: bool = True,
          results: str = "results.json") -> Iterator[Run]:
  """Locks `workdir` for this run, checks and records its config; see the module doc. A run
  refused with ConfigError inside the block takes back the config.json it wrote and the
  workdir it created (when that holds nothing else), so bad input leaves nothing behind."""
  created = not os.path.exists(workdir)
  _makedirs(workdir)
  lock = _lock(workdir) if main else contextlib.nullcontext()
  with lock:
    config = json.loads(json.dumps(config))
    old = _read_json(os.path.join(workdir, CONFIG))
    if old is not None:
      diff = first_difference(old, config)
      if diff is not None:
        raise ConfigError(f"workdir {workdir} holds a run with {diff}: use another workdir or "
                          "the same config")
    done = _read_json(os.path.join(workdir, FINISHED))
    run = Run(workdir, config, results, False, main)
    if (done is not None and os.path.exists(run.results_path)
        and first_difference(done.get("config", {}), config, extend=False) is None):
      print(f"{name}: already finished in {workdir}; results in {run.results_path}",
            file=sys.stderr)
      yield Run(workdir, config, results, True, main)
      return
    if main:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(workdir, FINISHED))
      write_json(os.path.join(workdir, CONFIG), config)
    try:
      yield run
    except ConfigError:
      if main and old is None:
        _take_back(workdir, created)
      raise


def _take_back(workdir: str, created: bool) -> None:
  """Removes the config.json a refused run wrote, and its workdir if it made it and nothing
  else is there."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(workdir, CONFIG))
  if created and set(os.listdir(workdir)) <= {LOCK}:
    shutil.rmtree(workdir, ignore_errors=True)


def run_owned(workdir: str, config, name: str, fn: Callable[[], dict],
              still_valid: Callable[[], bool] | None = None,
              completed: Callable[[dict], bool] = lambda out: True) -> dict:
  """Runs `fn()` holding the workdir (see the module doc): a finished run of the same config
  returns its results at once (if `still_valid()`), a differing config or a second process
  is refused in one line; the run is marked finished when `completed(out)`."""
  from jaxcode import parallel
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  with owned(workdir, cfg, name, main=parallel.is_main_process()) as owner:
    if owner.finished and (still_valid is None or still_valid()):
      return owner.results()
    out = fn()
    if completed(out):
      owner.finish()
    return out
