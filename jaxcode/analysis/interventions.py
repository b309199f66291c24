"""Interventions on features and activations: steering, ablation, clamping, activation patching
and attribution patching.

Feature interventions (layer j, position c, feature i, value v) on a transcoder set or CLT
(attribution.Coders, raw units), in one of two settings (circuit-tracer's, notes/circuits.md 5):

  constrained  through the prompt's local replacement model: attention patterns, normalisation
               scales and every MLP output frozen to the clean run, errors kept; the
               intervention injects (v - a_clean) W_dec[j][i, m - j] at hook_out(m), c for each
               output layer m of the feature. Only direct paths through the frozen linear model
               respond, so a constrained ablation (v = 0) moves a target by exactly minus the
               graph's edge from that feature.
  free         through the real model: every layer recomputed; at hook_out(m) the real MLP
               output gets (v - a_now) W_dec[j][i, m - j], with a_now the feature's activation
               on this run's own input at hook_in(j) (so clamping to the current value is a
               no-op, and downstream features, attention and norms respond; errors are kept
               implicitly, since the real MLP runs).

Steering adds alpha * W_dec[j][i, m - j] at hook_out(m), c (every output layer of the feature)
in either setting. Activation patching replaces a hookpoint's activation at chosen positions
by its value on another prompt of the same length. Attribution patching (Nanda's first-order
approximation) estimates every patch's effect on a metric at once as
grad_h metric(clean) . (h_corrupt - h_clean), with the gradient taken by one backward pass
through additive injections at every requested hookpoint; `attribution_patching` returns it
next to the exact effects (one batched forward of every single patch).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import attribution as attr
from jaxcode.errors import ConfigError
from jaxcode.models.lm import parse_hookpoints


@dataclasses.dataclass(frozen=True)
class FeatureEdit:
  """Set feature `feature` of transcoder layer `layer` at position `pos` to `value` (clamp;
  value 0 ablates), or, with steer=True, add `value` times its decoder rows."""
  layer: int
  pos: int
  feature: int
  value: float
  steer: bool = False


def _check_edits(coders: attr.Coders, edits: Sequence[FeatureEdit], T: int) -> list:
  if not isinstance(edits, (list, tuple)) or not edits:
    raise ConfigError("interventions: expected a non-empty list of FeatureEdit")
  out = []
  for e in edits:
    if not isinstance(e, FeatureEdit):
      raise ConfigError(f"intervention {e!r}: expected a FeatureEdit(layer, pos, feature, value)")
    L = coders.n_layers
    if not 0 <= e.layer < L:
      raise ConfigError(f"intervention layer {e.layer}: expected a transcoder layer in [0, {L})")
    F = coders.W_enc[e.layer].shape[0]
    if not 0 <= e.feature < F:
      raise ConfigError(f"intervention feature {e.feature}: layer {e.layer} has features "
                        f"0..{F - 1}")
    if not -T <= e.pos < T:
      raise ConfigError(f"intervention position {e.pos}: the prompt has {T} tokens")
    out.append(dataclasses.replace(e, pos=e.pos % T))
  return out


def constrained(local: attr.LocalReplacement, edits: Sequence[FeatureEdit]):
  """(logits [T, V], x_in [L, T, D], final [T, D]) of the frozen local replacement model
  with these feature edits."""
  L, T, D = local.y_out.shape
  edits = _check_edits(local.coders, edits, T)
  u_out = np.zeros((L, T, D), np.float32)
  for e in edits:
    a = float(np.asarray(local.codes[e.layer])[e.pos, e.feature])
    delta = e.value if e.steer else e.value - a
    u_out += local.feature_vectors(e.layer, e.pos, e.feature, delta)
  x_in, final, logits = local.run(None, u_out)
  return logits, x_in, final


def _free_edits(coders: attr.Coders, ins, outs, edits, T: int) -> dict:
  """Model edits: at hook_in(j) the current codes of the edited features are computed; at
  hook_out(m) each edit's (v - a_now) (or alpha for steering) times its decoder row is added."""
  now: dict = {}

  def read(j):
    def edit(x):
      pre, codes = coders.encode(j, x[0].astype(jnp.float32))
      now[j] = codes
      return x
    return edit

  def write(m):
    def edit(y):
      add = jnp.zeros(y.shape[1:], jnp.float32)
      for e in edits:
        s = m - e.layer
        if 0 <= s < coders.W_dec[e.layer].shape[1]:
          scale = e.value if e.steer else e.value - now[e.layer][e.pos, e.feature]
          add = add.at[e.pos].add(scale * jnp.asarray(coders.W_dec[e.layer][e.feature, s]))
      return y + add[None].astype(y.dtype)
    return edit
  layers = {e.layer for e in edits}
  out = {ins[j]: read(j) for j in layers}
  out.update({outs[m]: write(m) for m in range(len(outs))})
  return out


def free(lm, transcoders, ids, edits: Sequence[FeatureEdit]):
  """Logits [T, V] of the real model with these feature edits (see the module docstring)."""
  coders = attr.as_coders(transcoders)
  ins, outs = attr.check_coders(lm, coders)
  ids = attr.check_ids(lm, ids)
  edits = _check_edits(coders, edits, ids.size)
  rec = lm.module.apply({"params": lm.params}, jnp.asarray(ids)[None],
                        jnp.ones((1, ids.size), jnp.int32), lm.n_layers, True,
                        edits=_free_edits(coders, ins, outs, edits, ids.size))
  return rec["logits"][0]


# ---------------------------------------------------------------- activation patching

def _check_pair(lm, ids_clean, ids_corrupt):
  a, b = attr.check_ids(lm, ids_clean), attr.check_ids(lm, ids_corrupt)
  if a.shape != b.shape:
    raise ConfigError(f"patching prompts of {a.size} and {b.size} tokens: expected prompts of "
                      "the same length")
  return a, b


def _hooks(lm, hookpoints) -> list:
  names, _, _ = parse_hookpoints(list(hookpoints), lm.n_layers)
  bad = [h for h in names if h in ("logits", "final")]
  if bad:
    raise ConfigError(f"hookpoint {bad[0]!r}: expected a hookpoint inside the model")
  return list(names)


def _run(lm, ids_BT, edits):
  B, T = ids_BT.shape
  return lm.module.apply({"params": lm.params}, ids_BT, jnp.ones((B, T), jnp.int32),
                         lm.n_layers, True, edits=edits)


def patch(lm, ids_clean, ids_corrupt, hookpoint: str, positions=None):
  """Logits [T, V] of the clean prompt with `hookpoint` replaced by the corrupt prompt's
  activation at `positions` (None: all)."""
  a, b = _check_pair(lm, ids_clean, ids_corrupt)
  (h,) = _hooks(lm, [hookpoint])
  corrupt = _run(lm, jnp.asarray(b)[None], None)[h]
  sel = np.zeros(a.size, bool)
  sel[slice(None) if positions is None else list(positions)] = True
  m = jnp.asarray(sel)[None, :, None]
  return _run(lm, jnp.asarray(a)[None], {h: lambda y: jnp.where(m, corrupt, y)})["logits"][0]


def logit_diff_metric(good: int, bad: int) -> Callable:
  """metric(logits [T, V]) = logit[good] - logit[bad] at the last position."""
  return lambda logits: logits[-1, good] - logits[-1, bad]


def attribution_patching(lm, ids_clean, ids_corrupt, hookpoints: Sequence[str],
                         metric: Callable) -> dict:
  """First-order (gradient) and exact effects on metric(logits) of patching each hookpoint at
  each position from the corrupt prompt into the clean one.

  Returns approx and exact [H, T] (float64), the clean and corrupt metric values, and the
  Pearson correlation of approx and exact over the patches."""
  a, b = _check_pair(lm, ids_clean, ids_corrupt)
  names = _hooks(lm, hookpoints)
  T = a.size
  clean = _run(lm, jnp.asarray(a)[None], None)
  corrupt = _run(lm, jnp.asarray(b)[None], None)
  delta = jnp.stack([corrupt[h][0] - clean[h][0] for h in names]).astype(jnp.float32)

  def with_injections(u):
    edits = {h: (lambda k: lambda y: y + u[k][None].astype(y.dtype))(k) for k, h in enumerate(names)}
    return metric(_run(lm, jnp.asarray(a)[None], edits)["logits"][0])
  grad = jax.grad(with_injections)(jnp.zeros_like(delta))
  approx = np.asarray(jnp.sum(grad * delta, -1), np.float64)
  H = len(names)
  sel = np.zeros((H * T, H, T), bool)
  sel[np.arange(H * T), np.arange(H * T) // T, np.arange(H * T) % T] = True
  m = jnp.asarray(sel)[..., None]
  edits = {h: (lambda k, h: lambda y: jnp.where(m[:, k], corrupt[h], y))(k, h)
           for k, h in enumerate(names)}
  rec = _run(lm, jnp.broadcast_to(jnp.asarray(a), (H * T, T)), edits)
  base = float(metric(clean["logits"][0]))
  exact = np.array([float(metric(rec["logits"][r])) for r in range(H * T)]).reshape(H, T) - base
  ok = (exact.std() > 0) and (approx.std() > 0)
  corr = float(np.corrcoef(approx.ravel(), exact.ravel())[0, 1]) if ok else float("nan")
  return {"hookpoints": names, "approx": approx, "exact": exact, "metric_clean": base,
          "metric_corrupt": float(metric(corrupt["logits"][0])), "correlation": corr}
