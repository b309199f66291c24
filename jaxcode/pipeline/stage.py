"""The stage contract: a folder is complete when its final JSON exists; complete is reused."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

from jaxcode import workdir as workdir_lib


def read_final(folder: str, final: str = "results.json") -> dict | None:
  """The stage's final JSON, or None while the stage is incomplete (absent or cut off)."""
  try:
    with open(os.path.join(folder, final)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def run_stage(name: str, folder: str, compute: Callable[[], dict], final: str = "results.json",
              reuse: Callable[[dict], bool] | None = None, log: bool = True) -> dict:
  """Returns the stage's final JSON, computing it with `compute()` unless it is complete
  (and `reuse(result)` agrees); `compute` writes the folder's other files, and its result
  is written last, atomically, as the final file."""
  done = read_final(folder, final)
  if done is not None and (reuse is None or reuse(done)):
    if log:
      print(f"{name}: reused {os.path.join(folder, final)}", file=sys.stderr, flush=True)
    return done
  os.makedirs(folder, exist_ok=True)
  out = compute()
  workdir_lib.write_json(os.path.join(folder, final), out)
  return read_final(folder, final)
