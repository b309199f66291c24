"""Orbax checkpoints in one place: save every N steps (async), keep K, restore into any mesh.

A checkpoint holds two items: `state` (the TrainState pytree) and `meta` (JSON:
step, seed, data position, whatever the experiment wants to check on resume).
Restores go into an abstract target that carries the *current* mesh's shardings,
so a run saved on 8 devices resumes on 1.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcode.parallel import ConfigError

_STEP_DIR = re.compile(r"^\d+$")


def check_directory(directory: str) -> list[int]:
  """Steps of the complete checkpoints under `directory`; raises on a corrupt one.

  A step folder is complete when orbax's metadata file and both items are there
  and readable. Orbax's own temporary folders (unfinished saves) are ignored.
  """
  if not os.path.exists(directory):
    return []
  if not os.path.isdir(directory):
    raise ConfigError(f"checkpoint directory {directory} is not a directory")
  steps = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not _STEP_DIR.match(name):
      continue
    required = ["_CHECKPOINT_METADATA", "state", "meta"]
    missing = [r for r in required if not os.path.exists(os.path.join(path, r))]
    if missing:
      raise ConfigError(f"corrupt checkpoint {path}: missing {', '.join(missing)}; "
                        "delete that step folder to resume from an earlier one")
    state_dir = os.path.join(path, "state")
    if not any(f.startswith("_METADATA") or f == "manifest.ocdbt" or f.startswith("ocdbt")
               or f == "d" for f in os.listdir(state_dir)):
      raise ConfigError(f"corrupt checkpoint {path}: its state holds no array data")
    steps.append(int(name))
  return steps


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with the conventions above."""

  def __init__(self, directory: str, every: int, keep: int, async_save: bool = True):
    if every <= 0:
      raise ConfigError(f"checkpoint.every={every}: expected a positive number of steps")
    if keep <= 0:
      raise ConfigError(f"checkpoint.keep={keep}: expected a positive count")
    self.directory = os.path.abspath(directory)
    check_directory(self.directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores into `abstract_state` (ShapeDtypeStructs with target shardings)."""
    try:
      out = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; report one line and stop.
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ConfigError(f"corrupt or incompatible checkpoint {self.directory}/{step}: {first}") from e
    return out["state"], dict(out["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)
