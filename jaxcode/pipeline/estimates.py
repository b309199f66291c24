"""One layer's estimates on an activation cache and its SAE: intrinsic dimension, SAE
sparsity and orthogonality, eigenvalue power laws and clustering entropies (activations and
decoder, the galaxy), and the code/prose lobes (jaxcode.pipeline.lobes).

`run(path, ...)` is the stage: `path` (e.g. estimates/layer_3.json) is written last and
reused when complete.
"""

from __future__ import annotations

import os

import numpy as np

from jaxcode.pipeline import lobes as lobes_lib
from jaxcode.pipeline import stage


def _sample_ND(cache, hookpoint: str, tokens: int, seed: int, layer: int) -> np.ndarray:
  """`tokens` cached activations drawn without replacement (in cache order)."""
  rng = np.random.default_rng([int(seed), int(layer)])
  idx = np.sort(rng.choice(cache.n_tokens, min(cache.n_tokens, int(tokens)), replace=False))
  return np.asarray(cache.get(hookpoint, idx), np.float32)


def _galaxy_columns(gal: dict, act_h: dict, hi: int) -> dict:
  return dict(
      act_slope=gal["activations"]["slope"], act_slope_r2=gal["activations"]["r2"],
      dec_slope=gal["decoder"]["slope"], dec_slope_r2=gal["decoder"]["r2"],
      act_clustering_entropy=act_h["value"], act_clustering_entropy_error=act_h["error"],
      dec_clustering_entropy=gal["clustering_entropy_corrected"]["value"],
      dec_clustering_entropy_error=gal["clustering_entropy_corrected"]["error"],
      dec_clustering_entropy_notebook=gal["clustering_entropy_notebook"]["value"],
      eigenvalues_activations=np.asarray(gal["eigenvalues_activations"])[:hi].tolist(),
      eigenvalues_decoder=np.asarray(gal["eigenvalues_decoder"])[:hi].tolist())


def layer_estimates(block, lobes_block, cache, layer: int, hookpoint: str, sae,
                    sae_results: dict, prefix_len: int, body_len: int, seed: int) -> dict:
  """The layer's row. block: the estimates block as it is (tokens, twonn_discard, mle_k,
  lo, hi, pca_dim, theta, n_boot, n_boot_corrected); lobes_block: the lobes block."""
  from jaxcode.analysis import concept_geometry as cg
  from jaxcode.analysis import four_properties as fp
  from jaxcode.estimators import intrinsic_dim
  from jaxcode.models import sae_io
  x_ND = _sample_ND(cache, hookpoint, block.tokens, seed, layer)
  codes_NM = np.asarray(sae_io.encode(sae, x_ND))
  gal = lobes_lib.galaxy_statistics(sae.W_dec, x_ND, block, seed)
  act_h = cg.corrected_clustering_entropy(x_ND, len(x_ND), int(block.pca_dim), 1,
                                          int(block.n_boot_corrected), 0.8, int(seed))
  row = dict(
      layer=layer, hookpoint=hookpoint, tokens=int(len(x_ND)),
      twonn=intrinsic_dim.twonn(x_ND, discard_fraction=float(block.twonn_discard)),
      mle=intrinsic_dim.mle(x_ND, k=int(block.mle_k)),
      sae_l0=float(np.mean(np.sum(codes_NM > 0, axis=1))),
      sae_l0_fraction=fp.l0_sparsity(codes_NM), sae_orthogonality=fp.orthogonality(sae.W_dec),
      sae_explained_variance=sae_results.get("explained_variance"),
      sae_dead_fraction=sae_results.get("dead_fraction"))
  row.update(_galaxy_columns(gal, act_h, int(block.hi)))
  lobes = lobes_lib.lobe_statistics(cache, hookpoint, sae, prefix_len, body_len, lobes_block,
                                    seed)
  row["lobes"] = lobes             # with its clusters: the report's lobe pages list members
  return row


def run(path: str, block, lobes_block, cache, layer: int, hookpoint: str, sae,
        sae_results: dict, prefix_len: int, body_len: int, seed: int) -> dict:
  """`layer_estimates` as a stage whose final file is `path`."""
  return stage.run_stage(
      f"estimates {hookpoint}", os.path.dirname(path),
      lambda: layer_estimates(block, lobes_block, cache, layer, hookpoint, sae, sae_results,
                              prefix_len, body_len, seed),
      final=os.path.basename(path), log=False)
