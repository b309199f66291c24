"""Replacement-model evaluation: transcoders or a cross-layer transcoder spliced into a causal LM.

A `Replacement` covers model layers l_0 < l_1 < ... (consecutive for a CLT; j indexes them).
In one traced forward (one module.apply with edits), at every covered layer:

    x_j     = the activation at hook_in(l_j)   (e.g. blocks.{l}.mlp_in), read from the
              spliced stream (earlier layers' outputs already replaced)
    a_j     = encode(consts, j, x_j)             codes of layer j (any pytree)
    y_hat_m = decode(consts, m, [a_0..a_m], x_m) [N, d_out], raw hook_out units
    hook_out(l_m) := y_hat_m                     at splice positions, the true value elsewhere

N = B*T: encode and decode see every position of a batch; only splice positions are used.
A per-layer transcoder set's decode reads only a_m (and x_m for a skip term); a CLT's sums
the writes of every layer j <= m. The hook_in of a layer must be computed before its
hook_out (mlp_in, resid_mid before mlp_out), else ConfigError. Imported transcoders
(sae_io.ExternalSAE, skip transcoders included) become a Replacement through
`make_replacement_from_external`.

Splice positions are attended, non-special tokens (spliced_eval.splice_positions); the
ablations act at the same hook_out names and positions:
  zero ablation   hook_out(l) := 0
  mean ablation   hook_out(l) := mu_l, the mean of the clean hook_out(l) over the splice
                  positions of a first clean pass over the same rows (the first `mean_rows`
                  rows, all by default; the model's cached forward up to the last covered
                  block, sums in float64), or `means` given by the caller (e.g. from a
                  larger corpus); the result's `mean_ablation` says which.

Reported per replacement (natural log; CE and KL are means over predicted tokens, i.e. pairs
of attended tokens t -> t+1, in nats per token):
  ce_clean, ce_replacement, ce_zero, ce_mean      next-token cross-entropy
  ce_recovered_zero / _mean = (ce_abl - ce_replacement) / (ce_abl - ce_clean)
  kl_replacement, kl_zero, kl_mean               KL(p_clean || p_x) of the next-token laws
  per_layer[m]: fvu_spliced = sum |y_m - y_hat_m|^2 / sum |y_m - mean(y_m)|^2 with y_m the
    MLP output actually computed at hook_out(l_m) in the spliced run; fvu_clean likewise
    against the clean run's hook_out(l_m); mse_spliced / mse_clean: the squared errors per
    splice position and dimension (hook_out units squared). Sums over splice positions.
  Also: layers, hook_in, hook_out, n_splice_tokens, n_predictions, ce_delta = ce_replacement
  - ce_clean. Only causal LMs with an LM head (BERT modes: ConfigError).
Several replacements in one call share the clean forward, and those with the same hook_out
names share the two ablated forwards.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis.spliced_eval import (_ce_kl_sums, _log_softmax, _prepare, _ratio,
                                           resolve_mode, splice_positions, token_inputs)
from jaxcode.errors import ConfigError
from jaxcode.models import sae_io
from jaxcode.models.lm import BLOCK_HOOKS

_HOOK_RE = re.compile(r"blocks\.(\d+)\.(\w+)")


@dataclasses.dataclass(frozen=True)
class Replacement:
  """Dictionaries replacing the MLP outputs of `layers` (see the module docstring).

  consts: pytree of arrays (weights), passed to the jitted evaluation as an argument; static
  settings (k, activation names) belong in the encode/decode closures. consecutive: require
  consecutive layers (a CLT); a per-layer transcoder set may cover any increasing layers.
  """
  layers: tuple[int, ...]
  hook_in: str
  hook_out: str
  consts: Any
  encode: Callable
  decode: Callable
  consecutive: bool = True


# ---------------------------------------------------------------- validation

def _hook_name(pattern, layer: int, where: str, field: str) -> tuple[str, int]:
  """(name, position in BLOCK_HOOKS) of pattern at `layer`."""
  try:
    name = pattern.format(layer=layer)
  except (AttributeError, KeyError, IndexError, ValueError) as e:
    raise ConfigError(f"{where}: {field}={pattern!r}: expected a pattern like "
                      f"'blocks.{{layer}}.mlp_in' ({type(e).__name__})") from None
  m = _HOOK_RE.fullmatch(name)
  if not m or int(m.group(1)) != layer or m.group(2) not in BLOCK_HOOKS:
    raise ConfigError(f"{where}: {field}={pattern!r} gives {name!r} at layer {layer}: expected "
                      f"'blocks.{{layer}}.<one of {list(BLOCK_HOOKS)}>'")
  return name, BLOCK_HOOKS.index(m.group(2))


def _check_layers(rep: Replacement, n_layers: int, where: str) -> tuple[int, ...]:
  layers = rep.layers
  if (not isinstance(layers, (tuple, list)) or not layers
      or not all(isinstance(l, (int, np.integer)) and not isinstance(l, bool) for l in layers)):
    raise ConfigError(f"{where}: layers={layers!r}: expected a non-empty tuple of layer indices")
  layers = tuple(int(l) for l in layers)
  bad = [l for l in layers if not 0 <= l < n_layers]
  if bad:
    raise ConfigError(f"{where}: layer {bad[0]} does not exist (the model has {n_layers} "
                      f"blocks, 0..{n_layers - 1})")
  if any(b <= a for a, b in zip(layers, layers[1:])):
    raise ConfigError(f"{where}: layers={list(layers)}: expected strictly increasing layers")
  if rep.consecutive and layers[-1] - layers[0] != len(layers) - 1:
    raise ConfigError(f"{where}: layers={list(layers)}: expected consecutive layers (a "
                      "cross-layer transcoder; set consecutive=False for per-layer ones)")
  return layers


def hook_names(rep: Replacement, n_layers: int, where: str = "replacement"):
  """([hook_in name], [hook_out name]) per covered layer; ConfigError for bad layers,
  patterns, or an output hookpoint computed before the input one."""
  layers = _check_layers(rep, n_layers, where)
  ins, outs = [], []
  for l in layers:
    (i_name, i_pos), (o_name, o_pos) = (_hook_name(rep.hook_in, l, where, "hook_in"),
                                        _hook_name(rep.hook_out, l, where, "hook_out"))
    if o_pos <= i_pos:
      raise ConfigError(f"{where}: output hookpoint {o_name!r} before the input one {i_name!r}: "
                        "expected hook_in computed before hook_out (e.g. mlp_in -> mlp_out)")
    ins.append(i_name)
    outs.append(o_name)
  return ins, outs


def _check_consts(rep: Replacement, where: str):
  for leaf in jax.tree.leaves(rep.consts):
    if not isinstance(leaf, (np.ndarray, jax.Array, np.generic)):
      raise ConfigError(f"{where}: consts holds a value of type {type(leaf).__name__}: expected a pytree of "
                        "arrays (static settings belong in the encode/decode closures)")
  if not (callable(rep.encode) and callable(rep.decode)):
    raise ConfigError(f"{where}: encode and decode must be functions")


def _check_shapes(lm, rep: Replacement, ins, outs, where: str, n: int = 2):
  """Abstract evaluation of encode/decode on [n, width] inputs: every code is computed and
  every y_hat_m has hook_out's width, or ConfigError (no compute)."""
  _check_consts(rep, where)
  stage = {}

  def chain(consts):
    codes = []
    for m, (i_name, o_name) in enumerate(zip(ins, outs)):
      x = jnp.zeros((n, lm.hookpoint_width(i_name)), jnp.float32)
      stage.update(what=f"encode(consts, {m}, x [{n}, {x.shape[1]}]) at {i_name}")
      codes.append(rep.encode(consts, m, x))
      stage.update(what=f"decode(consts, {m}, codes, x) for {o_name}")
      y = rep.decode(consts, m, list(codes), x)
      want = (n, lm.hookpoint_width(o_name))
      if getattr(y, "shape", None) != want:
        raise ConfigError(f"{where}: decode(consts, {m}, ...) for {o_name} returned shape "
                          f"{getattr(y, 'shape', type(y).__name__)}: expected {want}")
    return 0
  try:
    jax.eval_shape(chain, rep.consts)
  except ConfigError as e:
    if str(e).startswith(where):
      raise
    raise ConfigError(f"{where}: {stage.get('what')}: {e}") from None
  except Exception as e:
    msg = (str(e).splitlines() or [""])[0][:200]
    raise ConfigError(f"{where}: {stage.get('what')} failed ({type(e).__name__}: {msg}): "
                      "expected consts matching the hookpoint widths") from None


# ---------------------------------------------------------------- the traced forwards

def _fill_edit(sp_BT1, fill_D):
  """Edit: the activation replaced by fill_D (None: zeros) at splice positions."""
  def edit(y_BTD):
    f = jnp.zeros_like(y_BTD) if fill_D is None else jnp.broadcast_to(
        fill_D.astype(y_BTD.dtype), y_BTD.shape)
    return jnp.where(sp_BT1, f, y_BTD)
  return edit


def _replacement_edits(rep: Replacement, consts, ins, outs, sp_BT1, trace: dict) -> dict:
  """Edits recording x_j (and its codes) at hook_in and splicing y_hat_m at hook_out; the
  true and predicted outputs are appended to trace['y'], trace['y_hat'] (float32 [B,T,D])."""
  xs, codes = [], []

  def record(j):
    def edit(x_BTD):
      x_ND = x_BTD.reshape(-1, x_BTD.shape[-1]).astype(jnp.float32)
      xs.append(x_ND)
      codes.append(rep.encode(consts, j, x_ND))
      return x_BTD
    return edit

  def splice(m):
    def edit(y_BTD):
      if len(codes) != m + 1:   # guaranteed by hook_names' order check
        raise RuntimeError(f"{outs[m]} reached with {len(codes)} codes, expected {m + 1}")
      y_hat = rep.decode(consts, m, list(codes), xs[m]).reshape(y_BTD.shape)
      trace["y"].append(y_BTD.astype(jnp.float32))
      trace["y_hat"].append(y_hat.astype(jnp.float32))
      return jnp.where(sp_BT1, y_hat.astype(y_BTD.dtype), y_BTD)
    return edit

  edits = {name: record(j) for j, name in enumerate(ins)}
  edits.update({name: splice(m) for m, name in enumerate(outs)})
  return edits


def _moments(y_BTD, w_BT1):
  return jnp.sum(y_BTD * w_BT1, (0, 1)), jnp.sum(y_BTD * y_BTD * w_BT1)


def _replacement_sums(run, key: str, rep, consts, ins, outs, sp, w, y_clean, clean_logp,
                      targets, weight) -> dict:
  """CE/KL sums of one replacement's forward and its per-layer error and moment sums."""
  trace = {"y": [], "y_hat": []}
  logits = run(_replacement_edits(rep, consts, ins, outs, sp, trace))["logits"]
  s = {}
  s[f"ce_rep/{key}"], s[f"kl_rep/{key}"] = _ce_kl_sums(logits, clean_logp, targets, weight)
  for m, o in enumerate(outs):
    y, y_hat = trace["y"][m], trace["y_hat"][m]
    s[f"err_spliced/{key}/{m}"] = jnp.sum((y - y_hat) ** 2 * w)
    s[f"err_clean/{key}/{m}"] = jnp.sum((y_clean[o] - y_hat) ** 2 * w)
    s[f"y_sum/{key}/{m}"], s[f"y_sq/{key}/{m}"] = _moments(y, w)
  return s


def make_eval_fn(lm, reps: Mapping[str, Replacement], names: Mapping[str, tuple],
                 groups: list[tuple[str, ...]]):
  """The jitted (params, consts, means, ids, mask, splice, targets, weight) -> dict of sums.

  reps/names keyed alike ({key: Replacement}, {key: (ins, outs)}); groups: the distinct
  hook_out tuples, each ablated once (zero and mean); means: {hook_out name: [D] float32}.
  """
  module, n_layers = lm.module, lm.n_layers
  all_outs = sorted({o for g in groups for o in g})

  def fn(params, consts, means, ids, mask, splice, targets, weight):
    run = lambda edits: module.apply({"params": params}, ids, mask, n_layers, True, edits=edits)
    sp, w = splice[..., None], splice.astype(jnp.float32)[..., None]
    clean = run(None)
    clean_logp = _log_softmax(clean["logits"])
    s = {"n_pred": jnp.sum(weight), "n_splice": jnp.sum(splice)}
    s["ce_clean"], _ = _ce_kl_sums(clean["logits"], clean_logp, targets, weight)
    y_clean = {o: clean[o].astype(jnp.float32) for o in all_outs}
    for o, y in y_clean.items():
      s[f"y_sum/{o}"], s[f"y_sq/{o}"] = _moments(y, w)
    for g, outs in enumerate(groups):
      for kind in ("zero", "mean"):
        edits = {o: _fill_edit(sp, None if kind == "zero" else means[o]) for o in outs}
        s[f"ce_{kind}/{g}"], s[f"kl_{kind}/{g}"] = _ce_kl_sums(
            run(edits)["logits"], clean_logp, targets, weight)
    for key, rep in reps.items():
      s.update(_replacement_sums(run, key, rep, consts[key], *names[key], sp, w, y_clean,
                                 clean_logp, targets, weight))
    return s

  return jax.jit(fn)


# ---------------------------------------------------------------- entry point

def _batches(arrays, b: int):
  """Fixed-shape row batches; the last one padded with all-zero rows (no splice, no weight)."""
  n = arrays[0].shape[0]
  for b0 in range(0, n, b):
    parts = [a[b0:b0 + b] for a in arrays]
    pad = b - parts[0].shape[0]
    if pad:
      parts = [np.concatenate([p, np.zeros((pad,) + p.shape[1:], p.dtype)]) for p in parts]
    yield [jnp.asarray(p) for p in parts]


def _check_inputs(lm, input_ids, attention_mask, special, batch_size, mean_rows):
  if resolve_mode(lm, "auto") != "causal":
    raise ConfigError(f"replacement_eval: expected a causal LM with an LM head, got "
                      f"model_type={lm.model_type!r} (has_logits={lm.has_logits})")
  ids, mask = token_inputs(input_ids, attention_mask, special)
  vocab, n_ctx = lm.module.vocab, getattr(lm.module, "n_ctx", ids.shape[1])
  if ids.size and (ids.min() < 0 or ids.max() >= vocab):
    raise ConfigError(f"input_ids in [{ids.min()}, {ids.max()}]: expected token ids in "
                      f"[0, {vocab - 1}] (the model's vocabulary)")
  if ids.shape[1] > n_ctx:
    raise ConfigError(f"sequence length {ids.shape[1]}: the model allows at most {n_ctx}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer")
  if mean_rows is not None and (isinstance(mean_rows, bool) or not isinstance(
      mean_rows, (int, np.integer)) or not 1 <= mean_rows <= ids.shape[0]):
    raise ConfigError(f"mean_rows={mean_rows!r}: expected None or an integer in "
                      f"[1, {ids.shape[0]}] (the number of rows)")
  return ids, mask


def _check_means(lm, means, outs_needed) -> dict:
  out = {}
  for o in outs_needed:
    if o not in means:
      raise ConfigError(f"means has no entry for {o!r}: expected a [d] mean for every hook_out "
                        f"of the replacements ({sorted(outs_needed)})")
    v = np.asarray(means[o], np.float32)
    if v.shape != (lm.hookpoint_width(o),):
      raise ConfigError(f"means[{o!r}] of shape {v.shape}: expected ({lm.hookpoint_width(o)},)")
    out[o] = jnp.asarray(v)
  return out


def _clean_means(lm, ids, mask, splice, outs, batch):
  """Mean clean hook_out activations [D] over the splice positions of these rows (the
  model's own cached jitted forward up to the last needed block, sums in float64)."""
  if not splice.any():
    raise ConfigError("mean_rows: the rows for the mean ablation have no splice positions")
  sums = {o: 0.0 for o in outs}
  for i, m, sp in _batches([ids, mask, splice], batch):
    rec = jax.device_get(lm.apply(i, m, tuple(outs)))
    sp = np.asarray(sp)
    sums = {o: sums[o] + np.asarray(rec[o], np.float64)[sp].sum(0) for o in outs}
  return {o: jnp.asarray((sums[o] / splice.sum()).astype(np.float32)) for o in outs}


def _validated(lm, replacement):
  """({key: Replacement}, {key: (ins, outs)}, single?) with every replacement checked."""
  single = isinstance(replacement, Replacement)
  reps = {"": replacement} if single else replacement
  if not isinstance(reps, Mapping) or not reps or not all(
      isinstance(r, Replacement) for r in reps.values()):
    raise ConfigError("replacement: expected a Replacement or a non-empty dict {name: "
                      "Replacement}")
  names = {}
  for key, rep in reps.items():
    where = "replacement" if single else f"replacement {key!r}"
    names[key] = hook_names(rep, lm.n_layers, where)
    _check_shapes(lm, rep, *names[key], where)
  return dict(reps), names, single


def replacement_eval(lm, input_ids, attention_mask,
                     replacement: Replacement | Mapping[str, Replacement], *, special=None,
                     batch_size: int = 8, mean_rows: int | None = None,
                     means: Mapping[str, Any] | None = None) -> dict:
  """Clean vs replacement-model vs zero- and mean-ablated forwards (see the module doc).

  input_ids, attention_mask: [N, T]; special: optional [N, T] bool of tokenizer-added tokens
  (never spliced). mean_rows: the first mean_rows rows feed the clean pass giving the mean
  ablation's means (None: all rows); means: {hook_out name: [d]} given instead (that pass is
  skipped). Returns the dict of the module docstring, or {name: dict} for a dict input.
  """
  ids, mask = _check_inputs(lm, input_ids, attention_mask, special, batch_size, mean_rows)
  reps, names, single = _validated(lm, replacement)
  splice = splice_positions(mask, special)
  if not splice.any():
    raise ConfigError("no splice positions: every token is padding or special")
  model_ids, targets, weight, _ = _prepare(lm, ids, mask, splice, "causal", 0.0, 0, None)
  if weight.sum() == 0:
    raise ConfigError("no positions to score: sequences need at least two attended tokens")
  groups = sorted({tuple(outs) for _, outs in names.values()})
  all_outs = sorted({o for g in groups for o in g})
  B = min(int(batch_size), ids.shape[0])
  if means is not None:
    mean_vecs, mean_info = _check_means(lm, means, all_outs), "given"
  else:
    r = ids.shape[0] if mean_rows is None else int(mean_rows)
    mean_vecs = _clean_means(lm, ids[:r], mask[:r], splice[:r], all_outs, B)
    mean_info = f"clean forwards over the first {r} rows"
  fn = make_eval_fn(lm, reps, names, groups)
  consts = {k: rep.consts for k, rep in reps.items()}
  totals: dict = {}
  for parts in _batches([model_ids, mask, splice, targets, weight], B):
    for k, v in jax.device_get(fn(lm.params, consts, mean_vecs, *parts)).items():
      totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
  per = {k: summarise(totals, k, reps[k], names[k], groups.index(tuple(names[k][1])), mean_info)
         for k in reps}
  return per[""] if single else per


def _fvu(err: float, y_sum, y_sq: float, n: float) -> float:
  return _ratio(err, y_sq - float(np.sum(y_sum ** 2)) / n)


def summarise(t: dict, key: str, rep: Replacement, names, g: int, mean_info: str) -> dict:
  """Means, recovered fractions and per-layer FVU of one replacement from the summed totals."""
  n, n_pred = float(t["n_splice"]), float(t["n_pred"])
  ce = {k: float(t[v]) / n_pred for k, v in (("clean", "ce_clean"), ("rep", f"ce_rep/{key}"),
                                            ("zero", f"ce_zero/{g}"), ("mean", f"ce_mean/{g}"))}
  kl = {k: float(t[v]) / n_pred for k, v in (("rep", f"kl_rep/{key}"), ("zero", f"kl_zero/{g}"),
                                            ("mean", f"kl_mean/{g}"))}
  per_layer = []
  for m, (layer, o) in enumerate(zip(rep.layers, names[1])):
    err_s, err_c = float(t[f"err_spliced/{key}/{m}"]), float(t[f"err_clean/{key}/{m}"])
    size = n * t[f"y_sum/{o}"].size
    per_layer.append({
        "layer": int(layer), "hook_in": names[0][m], "hook_out": o,
        "fvu_spliced": _fvu(err_s, t[f"y_sum/{key}/{m}"], float(t[f"y_sq/{key}/{m}"]), n),
        "fvu_clean": _fvu(err_c, t[f"y_sum/{o}"], float(t[f"y_sq/{o}"]), n),
        "mse_spliced": err_s / size, "mse_clean": err_c / size})
  return {"layers": [int(l) for l in rep.layers], "hook_in": rep.hook_in,
          "hook_out": rep.hook_out, "n_splice_tokens": int(n), "n_predictions": int(n_pred),
          "mean_ablation": mean_info,
          "ce_clean": ce["clean"], "ce_replacement": ce["rep"], "ce_zero": ce["zero"],
          "ce_mean": ce["mean"], "ce_delta": ce["rep"] - ce["clean"],
          "ce_recovered_zero": _ratio(ce["zero"] - ce["rep"], ce["zero"] - ce["clean"]),
          "ce_recovered_mean": _ratio(ce["mean"] - ce["rep"], ce["mean"] - ce["clean"]),
          "kl_replacement": kl["rep"], "kl_zero": kl["zero"], "kl_mean": kl["mean"],
          "per_layer": per_layer}


# ---------------------------------------------------------------- imported transcoders

_ARRAY_FIELDS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip")


def make_replacement_from_external(transcoders: Mapping[int, "sae_io.ExternalSAE"], *,
                                   hook_in: str = "blocks.{layer}.mlp_in",
                                   hook_out: str = "blocks.{layer}.mlp_out") -> Replacement:
  """A per-layer Replacement of imported transcoders {layer: ExternalSAE} (skip transcoders
  too): codes a_m = sae_io.encode(x_m), y_hat_m = sae_io.decode(a_m, x_m) in raw units; the
  arrays go into consts, the activation and scales stay static. A dictionary whose own
  hook names are ours (blocks.<i>.<kind>) must name the same hookpoints."""
  if not isinstance(transcoders, Mapping) or not transcoders:
    raise ConfigError("transcoders: expected a non-empty dict {layer index: ExternalSAE}")
  bad = [l for l in transcoders if isinstance(l, bool) or not isinstance(l, (int, np.integer))]
  if bad:
    raise ConfigError(f"transcoders key {bad[0]!r}: expected layer indices (int)")
  layers = sorted(int(l) for l in transcoders)
  saes = []
  for l in layers:
    t = transcoders[l]
    where = f"transcoders[{l!r}]"
    if not isinstance(t, sae_io.ExternalSAE):
      raise ConfigError(f"{where}: a {type(t).__name__}: expected an ExternalSAE")
    sae_io.validate(t, where)
    if t.kind == "sae":
      raise ConfigError(f"{where}: kind='sae': expected a transcoder or skip_transcoder")
    _check_own_hooks(t, l, hook_in, hook_out, where)
    saes.append(t)
  consts = [{f: jnp.asarray(getattr(t, f), jnp.float32) for f in _ARRAY_FIELDS
             if getattr(t, f) is not None} for t in saes]

  def encode(c, j, x_ND):
    return sae_io.encode(dataclasses.replace(saes[j], **c[j]), x_ND)

  def decode(c, m, codes, x_ND):
    return sae_io.decode(dataclasses.replace(saes[m], **c[m]), codes[m], x_ND)
  return Replacement(tuple(layers), hook_in, hook_out, consts, encode, decode, consecutive=False)


def _check_own_hooks(t, layer, hook_in: str, hook_out: str, where: str):
  for field, pattern in (("hook_in", hook_in), ("hook_out", hook_out)):
    own = getattr(t, field)
    if isinstance(own, str) and _HOOK_RE.fullmatch(own):
      want, _ = _hook_name(pattern, layer, where, field)
      if own != want:
        raise ConfigError(f"{where}: the dictionary's {field} is {own!r}: expected {want!r}")


def make_replacement_from_clt(clt) -> Replacement:
  """The Replacement of a cross-layer transcoder (transcoder_io.ExternalCLT, raw units): codes
  a_j = act(x_j W_enc[j]^T + b_enc[j]); y_hat_m = sum_{j <= m} a_j W_dec[j][:, m-j] + b_dec[m]
  (+ x_m W_skip[m]); its layers and hook patterns are the CLT's own."""
  from jaxcode.models import transcoder_io
  transcoder_io.validate_clt(clt, "clt")
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  consts = {"W_enc": f32(clt.W_enc), "b_enc": f32(clt.b_enc),
            "W_dec": [f32(w) for w in clt.W_dec], "b_dec": f32(clt.b_dec)}
  if clt.threshold is not None:
    consts["threshold"] = f32(clt.threshold)
  if clt.W_skip is not None:
    consts["W_skip"] = f32(clt.W_skip)
  act, k = clt.activation, clt.k

  def encode(c, j, x_ND):
    pre = x_ND @ c["W_enc"][j].T + c["b_enc"][j]
    if act == "relu":
      return jnp.maximum(pre, 0)
    if act == "jumprelu":
      return jnp.maximum(pre, 0) * (pre > c["threshold"][j])
    v, i = jax.lax.top_k(pre, int(k))
    rows = jnp.arange(pre.shape[0])[:, None]
    return jnp.zeros_like(pre).at[rows, i].set(jnp.maximum(v, 0))

  def decode(c, m, codes, x_ND):
    y = c["b_dec"][m] + sum(codes[j] @ c["W_dec"][j][:, m - j] for j in range(m + 1))
    return y + x_ND @ c["W_skip"][m] if "W_skip" in c else y
  return Replacement(tuple(int(l) for l in clt.layers), clt.hook_in, clt.hook_out, consts,
                     encode, decode, consecutive=True)
