"""Stages: the reusable steps experiments are made of (layer 4; imports layers 0-3).

A stage is a function on typed inputs (a loaded model, an activation cache, a source, the
config block it needs, passed as it is) that writes one folder of a workdir. It is complete
when its final file exists (written last, by an atomic rename) and is then reused, not
recomputed; a half-written stage is redone (a cache keeps its complete chunks, training
resumes from its last checkpoint). `stage.run_stage` is that contract in one place.

  model.py            a model spec ('minilm', a local directory, a Hub id@revision) resolved
                      and loaded: the one place aliases live
  cache.py            the activation cache of a model's hookpoints over a corpus
  sae.py              SAEs (one or a sweep) trained on a source, evaluated, exported
  lobes.py            lobes and galaxy statistics of an SAE on a cache
  estimates.py        one layer's intrinsic dimension, SAE sparsity, spectra and lobes
  four_properties.py  intrinsic dimension, spectra and the four properties of concepts
  neuromfa.py         the multifractal spectrum of a model's weights, with its i.i.d. null

Experiments (layer 5) compose stages; no experiment imports another.
"""
