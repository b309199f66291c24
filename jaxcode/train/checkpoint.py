"""Orbax checkpoints in one place: save every N steps (async), keep K, restore into any mesh.

A checkpoint holds two items: `state` (the TrainState pytree) and `meta` (JSON: step, seed,
data position, the last metrics, a fingerprint of the state, whatever the experiment wants
to check on resume). Restores go into an abstract target that carries the *current* mesh's
shardings, so a run saved on 8 devices resumes on 1.

Crash safety (a SIGKILL may land anywhere):
- a save is written by orbax under a temporary name and renamed when complete;
- old checkpoints (keep-K) are deleted by us, not by orbax: first renamed to
  `deleting-<step>`, then removed, so a step folder is never half deleted;
- on start, leftovers of cut-off saves and deletions (orbax temporaries, `deleting-*`,
  step folders missing orbax's metadata or an item) are removed with one line each;
- every save records a fingerprint of the state's bits (computed on the devices, identical
  for any sharding); a restore recomputes it, and a checkpoint whose bits changed on disk
  is skipped, with one line naming it, for the previous complete one.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxcode import faults
from jaxcode.errors import ConfigError

_STEP_DIR = re.compile(r"^\d+$")
_ITEMS = ("_CHECKPOINT_METADATA", "state", "meta")
FINGERPRINT = "state_fingerprint"


def _say(msg: str) -> None:
  print(f"checkpoint: {msg}", file=sys.stderr, flush=True)


def _incomplete_reason(path: str) -> str | None:
  """Why a step folder is not a complete checkpoint (None when it is)."""
  missing = [r for r in _ITEMS if not os.path.exists(os.path.join(path, r))]
  if missing:
    return f"missing {', '.join(missing)}"
  state_dir = os.path.join(path, "state")
  if not any(f.startswith("_METADATA") or f == "manifest.ocdbt" or f.startswith("ocdbt")
             or f == "d" for f in os.listdir(state_dir)):
    return "its state holds no array data"
  return None


def check_directory(directory: str) -> list[int]:
  """Steps of the complete checkpoints under `directory`, ascending (incomplete ones and
  orbax's temporaries are not counted)."""
  if not os.path.exists(directory):
    return []
  if not os.path.isdir(directory):
    raise ConfigError(f"checkpoint directory {directory} is not a directory")
  return sorted(int(n) for n in os.listdir(directory)
                if _STEP_DIR.match(n) and _incomplete_reason(os.path.join(directory, n)) is None)


def remove_leftovers(directory: str) -> list[str]:
  """Removes what a killed save or deletion left; returns the names removed."""
  if not os.path.isdir(directory):
    return []
  gone = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if _STEP_DIR.match(name):
      why = _incomplete_reason(path)
    elif name.startswith("deleting-"):
      why = "a deletion was cut off"
    elif "orbax-checkpoint-tmp" in name:
      why = "a save was cut off"
    else:
      continue
    if why is None:
      continue
    _say(f"removed incomplete {path} ({why})")
    shutil.rmtree(path, ignore_errors=True)
    gone.append(name)
  return gone


def _words(x) -> jax.Array:
  """A leaf's bits as a flat uint32 vector."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


@jax.jit
def _fingerprint(tree) -> jax.Array:
  """Two position-weighted sums of every leaf's bits, mod 2^32. Integer sums do not depend
  on the order of reduction, so every mesh gives the same value; each element's weight is
  odd, so any single flipped bit changes the first sum."""
  h = jnp.zeros((2,), jnp.uint32)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    u = _words(leaf)
    idx = jnp.arange(u.shape[0], dtype=jnp.uint32)
    w1 = (idx * jnp.uint32(0x9E3779B1) + jnp.uint32(2 * i + 1)) | jnp.uint32(1)
    w2 = (idx * jnp.uint32(0x85EBCA77) + jnp.uint32((0x27D4EB2F * (i + 1)) % (1 << 32))) | jnp.uint32(1)
    h = h + jnp.stack([jnp.sum(u * w1), jnp.sum((u + idx) * w2)])
  return h


def fingerprint(tree) -> str:
  """Hex fingerprint of a pytree's bits (same on any mesh and process count)."""
  h = _fingerprint(tree)
  return "".join(f"{int(v):08x}" for v in np.asarray(h.addressable_data(0)))


def _reason(e: Exception) -> str:
  """The informative tail of an orbax / TensorStore error, on one short line."""
  text = str(e).strip()
  first = text.splitlines()[0].split(" [tensorstore_spec")[0] if text else type(e).__name__
  parts = first.split(": ")
  return ": ".join(parts[-3:]) if len(first) > 160 else first


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with the conventions above."""

  def __init__(self, directory: str, every: int, keep: int, async_save: bool = True,
               clean: bool = True):
    if every <= 0:
      raise ConfigError(f"checkpoint.every={every}: expected a positive number of steps")
    if keep <= 0:
      raise ConfigError(f"checkpoint.keep={keep}: expected a positive count")
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.main = jax.process_index() == 0
    check_directory(self.directory)
    if clean and self.main:
      remove_leftovers(self.directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=None, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))
    self._saved: set[int] = set()

  def complete_steps(self) -> list[int]:
    return check_directory(self.directory)

  def latest_step(self) -> int | None:
    steps = self.complete_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Saves asynchronously (after the previous save has finished and old ones are pruned)."""
    if step in self._saved or step in self.complete_steps():
      return False
    self.manager.wait_until_finished()
    self._prune(self.keep)
    meta = {**meta, FINGERPRINT: fingerprint(state)}
    ok = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    self._saved.add(step)
    faults.point("checkpoint.save")
    return ok

  def _prune(self, keep: int) -> None:
    """Deletes all but the newest `keep` complete checkpoints: rename, then remove."""
    if not self.main:
      return
    for step in self.complete_steps()[:-keep]:
      src = os.path.join(self.directory, str(step))
      dst = os.path.join(self.directory, f"deleting-{step}")
      os.replace(src, dst)
      faults.point("checkpoint.delete")
      shutil.rmtree(dst, ignore_errors=True)
    self.manager.reload()   # orbax caches the step list

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into `abstract_state` (ShapeDtypeStructs with target shardings) and checks
    the state's fingerprint against the one saved with it."""
    path = os.path.join(self.directory, str(step))
    try:
      out = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; report one line and stop.
      raise ConfigError(f"corrupt or incompatible checkpoint {path}: {_reason(e)}") from e
    state, meta = out["state"], dict(out["meta"])
    saved = meta.get(FINGERPRINT)
    if saved is not None and fingerprint(state) != saved:
      raise ConfigError(f"corrupt checkpoint {path}: its arrays do not match the fingerprint "
                        "saved with them (the files changed on disk)")
    return state, meta

  def restore_latest(self, abstract_state: Any,
                     accept: Callable[[dict], None] | None = None) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores intact, or None when there
    is none. A corrupt one is skipped with one line naming it, and removed so training can
    write that step again; `accept(meta)` may raise ConfigError to refuse a checkpoint of
    another run (that error propagates)."""
    steps = self.complete_steps()
    for i, step in enumerate(reversed(steps)):
      try:
        state, meta = self.restore(step, abstract_state)
      except ConfigError as e:
        older = steps[-i - 2] if i + 1 < len(steps) else None
        if older is None:
          raise ConfigError(f"{e}; no earlier complete checkpoint: delete "
                            f"{self.directory} to start over") from None
        _say(f"skipped step {step}: {e}; resuming from step {older}")
        if self.main:
          shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
          self.manager.reload()
        continue
      if accept is not None:
        accept(meta)
      return step, state, meta
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves; prunes to `keep` only when this checkpointer saved (a reader,
    such as loop.restore_state, leaves every checkpoint in place)."""
    self.manager.wait_until_finished()
    if self._saved:
      self._prune(self.keep)
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)
