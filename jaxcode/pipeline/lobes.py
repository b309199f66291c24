"""Lobes and galaxy statistics of an SAE on an activation cache (Li et al. 2024).

`lobe_statistics` is the one lobes pipeline: the cached tokens laid out as [rows, body]
(each row's special prefix removed), co-occurrence of the SAE's features over blocks of
`block.block_len` tokens, spectral lobes per affinity and cluster count, AMI with the
decoder-geometry clustering and the lobe probe against their nulls, per-source shares of the
lobes and the code/prose separation. Any number of sources (code, prose, and literature when
the corpus has it): the separation of every pair, their mean (`source_separation`), and the
AMI of block source with winning lobe against a permutation null. A row's source is that of the last document it holds
(the cache's token -> document -> source), the rule of `corpus.Packed.source_of_rows`.
`run` is the same as a stage: it writes `folder/results.json` and reuses it when complete.

`galaxy_statistics` is one layer's galaxy (spectra and clustering entropies of the decoder
directions and of activations), with the eigenvalues as lists.
"""

from __future__ import annotations

import numpy as np

from jaxcode.analysis import concept_geometry as cg
from jaxcode.errors import ConfigError
from jaxcode.pipeline import stage

SOURCE_CODE, SOURCE_PROSE = "code", "prose"
SEED_OFFSET = 42     # the lobes' clustering seed is SEED_OFFSET + the experiment seed


def row_sources(cache) -> np.ndarray:
  """[n_rows] source label of each cached row: that of the last document it holds ('' for a
  row with no document token), as `corpus.Packed.source_of_rows` gives it for the packed form."""
  m = cache.manifest
  info = cache.token_info(np.arange(cache.n_tokens))
  last_R = np.full(int(m["n_rows"]), -1, np.int64)
  np.maximum.at(last_R, info["row"].astype(np.int64), info["doc_index"].astype(np.int64))
  return np.array(list(m["sources"]) + [""], dtype=object)[last_R]


def dense_layout(cache, hookpoint: str, n_rows: int, body: int, offset: int):
  """(x_RBD, valid_RB): the cached activations of each row's text tokens, [n_rows, body, D]
  (the row's special prefix of `offset` tokens removed, so blocks start at the first text
  token), and which of the body's positions hold a token."""
  idx = np.arange(cache.n_tokens)
  info = cache.token_info(idx)
  col = info["col"] - offset
  x_RBD = np.zeros((n_rows, body, cache.width(hookpoint)), np.float32)
  x_RBD[info["row"], col] = cache.get(hookpoint, idx)
  valid_RB = np.zeros((n_rows, body), bool)
  valid_RB[info["row"], col] = True
  return x_RBD, valid_RB


def code_prose_separation(sources: dict) -> float | None:
  """Total-variation distance between the lobe shares of code and prose blocks (None when
  either is absent)."""
  if SOURCE_CODE not in sources or SOURCE_PROSE not in sources:
    return None
  a = np.asarray(sources[SOURCE_CODE]["share"])
  b = np.asarray(sources[SOURCE_PROSE]["share"])
  return float(0.5 * np.abs(a - b).sum())


def pair_separations(sources: dict) -> dict:
  """{'a|b': total-variation distance between the lobe shares of sources a and b} for every
  pair a < b of the sources (with code and prose only: one pair, code_prose_separation)."""
  names = sorted(sources)
  share = {n: np.asarray(sources[n]["share"]) for n in names}
  return {f"{a}|{b}": float(0.5 * np.abs(share[a] - share[b]).sum())
          for i, a in enumerate(names) for b in names[i + 1:]}


def source_separation(sources: dict) -> float | None:
  """The sources' separation, any number of them: the mean over all pairs of sources of the
  total-variation distance between their lobe shares (0: every source spreads its blocks over
  the lobes alike; 1: no two sources share a winning lobe). With two sources it is their TV
  distance, for code and prose code_prose_separation; None with fewer than two sources."""
  pairs = pair_separations(sources)
  return float(np.mean(list(pairs.values()))) if pairs else None


def _record(r: dict) -> dict:
  """One affinity and cluster count: AMI and probe with their nulls, the sources' shares,
  their separations and the AMI of block source with winning lobe against its null."""
  srcs = r.get("sources", {})
  out = {"ami": r["ami"]["ami"], "ami_null_mean": r["ami"]["null_mean"],
         "ami_null_sd": r["ami"]["null_sd"], "ami_sigma": r["ami"]["sigma"],
         "balanced_accuracy": r["probe"]["balanced_accuracy"],
         "probe_null_mean": r["probe"]["null_mean"], "probe_null_sd": r["probe"]["null_sd"],
         "probe_sigma": r["probe"]["sigma"], "sources": srcs,
         "code_prose_separation": code_prose_separation(srcs)}
  if srcs:
    out.update(pair_separations=pair_separations(srcs), source_separation=source_separation(srcs))
  if "source_ami" in r:
    sa = r["source_ami"]
    out.update(source_ami=sa["ami"], source_ami_null_mean=sa["null_mean"],
               source_ami_null_sd=sa["null_sd"], source_ami_sigma=sa["sigma"])
  return out


def summarise(res: dict, fired_BM) -> dict:
  """The JSON form of `cg.lobes`' result: counts, per-affinity records, and under
  'clusters' the active features and every clustering's labels (for figures)."""
  return {"n_features": res["n_features"], "n_active": res["n_active"],
          "blocks": res["blocks"], "cluster_counts": res["cluster_counts"],
          "fired_fraction": float(np.mean(fired_BM)),
          "affinities": {name: {str(k): _record(r) for k, r in per_k.items()}
                         for name, per_k in res["affinities"].items()},
          "clusters": {"active": np.asarray(res["active"]).tolist(),
                       "labels": {name: {str(k): np.asarray(v).tolist() for k, v in per_k.items()}
                                  for name, per_k in res["labels"].items()}}}


def lobe_statistics(cache, hookpoint: str, sae, prefix_len: int, body_len: int, block,
                    seed: int) -> dict:
  """The lobes of `sae`'s features on the cache's `hookpoint` (see the module doc).

  cache: a complete jaxcode.data.activations.ActivationCache; sae: as loaded by
  jaxcode.models.sae_io; prefix_len / body_len: the special tokens before each row's text
  and the text positions per row (seq_len minus the special prefix and suffix); block: the
  lobes config block as it is (block_len, threshold, batch_rows, cluster_counts, affinities,
  n_null_ami, n_null_probe); seed: the experiment seed (clustering uses SEED_OFFSET + seed).
  Returns n_features, n_active, blocks, cluster_counts, fired_fraction, affinities
  {name: {k: {ami, ami_null_mean, ami_null_sd, ami_sigma, balanced_accuracy,
  probe_null_mean, probe_null_sd, probe_sigma, sources, code_prose_separation,
  pair_separations, source_separation, source_ami, source_ami_null_mean, source_ami_null_sd,
  source_ami_sigma}}} and
  clusters {active, labels {name | 'geometry': {k: labels}}}. Cluster counts that are not
  below the number of active features are dropped; with none left (an SAE whose codes rarely
  pass lobes.threshold) the result has no affinities or clusters and says why in 'skipped'.
  """
  block_len = cg.check_block_len(block.block_len, body_len, "lobes.block_len")
  from jaxcode.models import sae_io
  x_RBD, valid_RB = dense_layout(cache, hookpoint, int(cache.manifest["n_rows"]), body_len,
                                 prefix_len)
  c_MM, t, fired_BM, rows_B = cg.cooccurrence(lambda z: sae_io.encode(sae, z), x_RBD, valid_RB,
                                              block_len, float(block.threshold),
                                              int(block.batch_rows))
  if t == 0:
    raise ConfigError(f"lobes: no complete block of {block_len} tokens in {hookpoint}: "
                      f"expected lobes.block_len <= the rows' text length {body_len}")
  n_active = len(cg.active_features(c_MM))
  counts = [int(k) for k in block.cluster_counts if int(k) < n_active]
  if not counts:                   # known only now: an SAE whose codes rarely pass the threshold
    return {"n_features": int(c_MM.shape[0]), "n_active": n_active, "blocks": int(t),
            "cluster_counts": [], "fired_fraction": float(np.mean(fired_BM)),
            "affinities": {}, "skipped": (
                f"{n_active} features fire above lobes.threshold={block.threshold} in a "
                f"block: too few for {min(block.cluster_counts)} clusters")}
  res = cg.lobes(c_MM, t, sae.W_dec, tuple(counts), tuple(block.affinities),
                 int(block.n_null_ami), int(block.n_null_probe), fired_BM,
                 row_sources(cache)[rows_B], seed=SEED_OFFSET + int(seed))
  return summarise(res, fired_BM)


def run(folder: str, cache, hookpoint: str, sae, prefix_len: int, body_len: int, block,
        seed: int) -> dict:
  """`lobe_statistics` as a stage: folder/results.json, reused when complete."""
  return stage.run_stage(
      f"lobes {hookpoint}", folder,
      lambda: lobe_statistics(cache, hookpoint, sae, prefix_len, body_len, block, seed),
      log=False)


def galaxy_statistics(w_dec_MD, acts_ND, block, seed: int) -> dict:
  """One layer's galaxy (cg.galaxy_layer) of the decoder directions and activations.

  block: the galaxy config block as it is (lo, hi, pca_dim, theta, n_boot, n_boot_corrected,
  and n_sub, the points subsampled before PCA; absent: all of acts_ND's rows). Returns
  decoder, activations, the three clustering entropies, and eigenvalues_decoder /
  eigenvalues_activations as lists (descending).
  """
  n_sub = int(block.n_sub) if "n_sub" in block else len(acts_ND)
  r = cg.galaxy_layer(w_dec_MD, acts_ND, int(block.lo), int(block.hi), n_sub,
                      int(block.pca_dim), float(block.theta), int(block.n_boot),
                      int(block.n_boot_corrected), int(seed))
  for k in ("eigenvalues_decoder", "eigenvalues_activations"):
    if k in r:
      r[k] = np.asarray(r[k]).tolist()
  return r
