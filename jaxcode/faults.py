"""Fault injection for the crash tests: SIGKILL this process at a named point.

`JAXCODE_FAULT=point:n[:TERM][,...]` kills the process (SIGKILL, no clean-up, as a kill -9
or a lost machine would; with `:TERM`, SIGTERM, as a preemption would) the n-th time (1-based)
that `point(name)` is reached. Unset in normal runs, where `point` is one environment lookup.
Points used by the code:
  checkpoint.save    right after an (async) checkpoint save was issued, while it is written
  checkpoint.delete  in the middle of deleting an old checkpoint (keep-N)
  cache.chunk        after a cache chunk's files are written, before the manifest names it
  results            after training, before results.json is written
"""

from __future__ import annotations

import os
import signal

_COUNTS: dict[str, int] = {}


def _plan() -> dict[str, tuple[int, int]]:
  spec = os.environ.get("JAXCODE_FAULT", "")
  out = {}
  for part in filter(None, spec.split(",")):
    fields = part.split(":")
    n = int(fields[1]) if len(fields) > 1 and fields[1] else 1
    sig = fields[2].strip() if len(fields) > 2 else "KILL"
    out[fields[0].strip()] = (n, getattr(signal, f"SIG{sig}"))
  return out


def point(name: str) -> None:
  """Counts a pass through `name`; signals this process when the plan says so."""
  plan = _plan()
  if name not in plan:
    return
  _COUNTS[name] = _COUNTS.get(name, 0) + 1
  n, sig = plan[name]
  if _COUNTS[name] == n:
    os.kill(os.getpid(), sig)
