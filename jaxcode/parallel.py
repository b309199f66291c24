"""Device mesh, sharding rules, multi-host start and per-host data feeding.

Layer 0 of jaxcode: everything above builds its shardings from here, so model
code never names devices. The mesh has two named axes, ``data`` and ``model``;
a size of -1 takes the devices the other axis leaves.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxcode.errors import ConfigError

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)


def resolve_axis_sizes(data: int, model: int, n_devices: int) -> tuple[int, int]:
  """Turns (data, model) with at most one -1 into sizes whose product is n_devices."""
  sizes = [int(data), int(model)]
  for name, s in zip(AXES, sizes):
    if s == 0 or s < -1:
      raise ConfigError(f"mesh.{name}={s}: expected a positive size or -1")
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh=(data={data}, model={model}): at most one axis may be -1")
  if -1 in sizes:
    other = sizes[1 - sizes.index(-1)]
    if n_devices % other:
      raise ConfigError(
          f"mesh=(data={data}, model={model}): {other} does not divide the {n_devices} devices")
    sizes[sizes.index(-1)] = n_devices // other
  if sizes[0] * sizes[1] != n_devices:
    raise ConfigError(
        f"mesh=(data={data}, model={model}): needs {sizes[0] * sizes[1]} devices, "
        f"{n_devices} are available")
  return sizes[0], sizes[1]


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all global devices)."""
  devices = list(jax.devices()) if devices is None else list(devices)
  d, m = resolve_axis_sizes(data, model, len(devices))
  return jax.make_mesh((d, m), AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def mesh_from_config(mesh_cfg) -> Mesh:
  """Mesh from a config with fields `data` and `model` (ints, -1 allowed)."""
  return make_mesh(int(mesh_cfg.data), int(mesh_cfg.model))


def single_device_mesh() -> Mesh:
  return make_mesh(1, 1, devices=jax.devices()[:1])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2, axis: int = 0) -> NamedSharding:
  """Shards dimension `axis` of an ndim array over `data`, replicates the rest."""
  spec = [None] * ndim
  spec[axis] = DATA
  return NamedSharding(mesh, P(*spec))


def sharding_for(mesh: Mesh, spec: Sequence[str | None] | P) -> NamedSharding:
  return NamedSharding(mesh, spec if isinstance(spec, P) else P(*spec))


def path_str(path) -> str:
  """'a/b/0/c' from a jax key path."""
  parts = []
  for k in path:
    if hasattr(k, "key"):
      parts.append(str(k.key))
    elif hasattr(k, "idx"):
      parts.append(str(k.idx))
    elif hasattr(k, "name"):
      parts.append(str(k.name))
    else:
      parts.append(str(k))
  return "/".join(parts)


def _fits(shape: Sequence[int], spec: P, mesh: Mesh) -> bool:
  for dim, ax in zip(shape, tuple(spec)):
    if ax is None:
      continue
    names = ax if isinstance(ax, tuple) else (ax,)
    size = int(np.prod([mesh.shape[n] for n in names]))
    if dim % size:
      return False
  return len(tuple(spec)) <= len(shape)


def tree_shardings(tree, mesh: Mesh, rules: Iterable[tuple[str, P]] = (),
                   strict: bool = False):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  `rules` is a list of (regex, PartitionSpec) tried in order against the leaf's
  path ('params/encoder/kernel'); the first match whose axes divide the leaf's
  shape wins; unmatched leaves are replicated. With strict=True a matching rule
  that does not divide the shape is an error instead of falling back.
  """
  rules = [(re.compile(r), s) for r, s in rules]

  def one(path, leaf):
    name = path_str(path)
    shape = getattr(leaf, "shape", ())
    for rx, spec in rules:
      if rx.search(name):
        if _fits(shape, spec, mesh):
          return NamedSharding(mesh, spec)
        if strict:
          raise ConfigError(f"{name} of shape {tuple(shape)} cannot be sharded as {spec} "
                            f"on mesh {dict(mesh.shape)}")
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def with_sharding(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the given shardings (restore targets)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


# ---------------------------------------------------------------- multi-host

def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None) -> None:
  """jax.distributed.initialize, once. With no address, auto-detects (TPU/SLURM/k8s)."""
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  if local_device_ids is not None:
    kwargs["local_device_ids"] = list(local_device_ids)
  jax.distributed.initialize(**kwargs)


def maybe_initialize_from_config(dist_cfg) -> None:
  """Starts jax.distributed when config.distributed.enabled is set."""
  if dist_cfg is None or not dist_cfg.get("enabled", False):
    return
  initialize_distributed(dist_cfg.get("coordinator_address") or None,
                         dist_cfg.get("num_processes") or None,
                         dist_cfg.get("process_id") if dist_cfg.get("coordinator_address") else None)


def process_rows(global_rows: int, sharding: NamedSharding) -> slice:
  """The contiguous rows of a dim-0-sharded global array that this process feeds."""
  idx = sharding.addressable_devices_indices_map((global_rows,))
  starts = [(s[0].start or 0) for s in idx.values()]
  stops = [(s[0].stop if s[0].stop is not None else global_rows) for s in idx.values()]
  return slice(min(starts), max(stops))


def global_batch(local_np: np.ndarray | dict, sharding: NamedSharding | dict,
                 global_rows: int):
  """Assembles a global jax.Array from this host's rows (every host calls it)."""
  if isinstance(local_np, dict):
    return {k: global_batch(v, sharding[k] if isinstance(sharding, dict) else sharding,
                            global_rows) for k, v in local_np.items()}
  shape = (global_rows,) + tuple(local_np.shape[1:])
  if jax.process_count() == 1:
    return jax.device_put(local_np, sharding)
  return jax.make_array_from_process_local_data(sharding, local_np, shape)


def is_main_process() -> bool:
  return jax.process_index() == 0


def to_host(tree):
  """NumPy copy of a pytree of (possibly multi-host sharded) arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
      if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x), tree)
