"""Helpers for tests that run launch scripts in subprocesses (fake CPU devices, localhost
jax.distributed)."""

import os
import socket

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_env(devices: int) -> dict:
  """The environment of a child process with `devices` fake CPU devices and the repo on the
  path."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return env


def free_port() -> int:
  """A free localhost port for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def set_fields(config, **over):
  """config (unlocked) with dotted overrides applied: set_fields(c, **{"sae.k": 4})."""
  for key, value in over.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config
