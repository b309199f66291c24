"""What every experiment shares: workdir checks, atomic JSON, and the launch wrapper."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any, Callable

from jaxcode.parallel import ConfigError


def absolute_workdir(workdir: str | None) -> str:
  """The --workdir flag as an absolute path (stages store paths relative to it)."""
  if not workdir:
    raise ConfigError("--workdir is empty: expected a directory to write the run into")
  return os.path.abspath(os.path.expanduser(workdir))


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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(_clean(obj), f, indent=1, allow_nan=False)
  os.replace(tmp, path)


def run_main(fn: Callable[[], Any]) -> None:
  """Runs a launch main: bad input -> one line and exit 2; NaN -> one line and exit 1;
  a signal-triggered checkpoint -> one line and exit 143 (rerun to resume)."""
  from jaxcode.train.loop import Preempted
  from jaxcode.train.metrics import NonFiniteError
  try:
    fn()
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(143)


def app_run(main) -> None:
  """absl app.run, but a bad --config override (an unknown field, a value of the wrong
  type) is reported in one line naming it, before any compute."""
  from absl import app, flags, logging
  try:
    remaining = flags.FLAGS(sys.argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    name = str(e).strip("'\" ")
    bad = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.") and name in a]
    where = f" {bad[0]}" if bad else ""
    print(f"error: bad config override{where}: {name!r} is not a field of the config "
          f"or its value has the wrong type ({type(e).__name__})", file=sys.stderr)
    sys.exit(2)
  quiet = not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:])

  def wrapped(argv):
    if quiet:   # orbax logs every save at INFO; keep the progress lines readable
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(wrapped, flags_parser=lambda argv: remaining)
