"""NeuroMFA claim (4) block: a small ResNet and a denoising MLP at the transformer family's
parameter counts, E(t) with the null, compared with the family (jaxcode/analysis/neuromfa_vision.py).

The study runs it as its claim 4 (configs/neuromfa_study.py includes `claim4_block`):
  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:claim4 --workdir=/tmp/nmfa_study
From Python: neuromfa_vision.claim4(claim4_block("small"), workdir, family_points).

Variants: 'default' (Fashion-MNIST, 2000 steps, 2 training seeds), 'small' (Fashion-MNIST,
128 steps, the family's two points up to 60k parameters: 8 models, 12.5 minutes measured on a
shared 2-core machine at load ~10, in two resumed calls), 'tiny' (scikit-learn's 8x8 digits,
8 steps, 85 s there; the tests run it with one seed and one checkpoint).

Choices the paper does not state, with reasons: a constant Adam learning rate (the
checkpoints are trained in segments, as launch.emergence does); no normalisation layers in
the ResNet (no batch statistics; the NIN is built from kernels only); the verdict compares
null-corrected E (E - E_null, `compare`), since the notes (neuromfa.md 1.6) show alpha0
and width track the weight scale alone.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config
from configs.neuromfa import stage_block as neuromfa_block

VARIANTS = {   # name: what it trains
    "default": "Fashion-MNIST, ResNet 2 blocks / MLP 2 hidden layers, 2000 steps, 2 seeds",
    "small": "Fashion-MNIST, 128 steps, 2 seeds, family points up to 60k parameters",
    "tiny": "scikit-learn digits (8x8), 8 steps, 2 seeds: seconds; what the tests run",
}


def claim4_block(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()     # loop fields: seed (unused: train_seeds), steps, optim, mesh, ...
  c.variant = variant            # the name written into the results
  c.steps = 2000                 # updates per model
  c.checkpoint_steps = ()        # () : 1, 2, 4, ..., steps (log-spaced); or explicit steps
  c.log_every = 100              # metrics.jsonl interval
  c.checkpoint.async_save = False  # segments end at checkpoints: save synchronously
  c.optim.lr = 1e-3              # constant Adam learning rate (segments need a constant rule)
  c.train_seeds = (0, 1)         # one trained model per seed and size (bootstrap units)
  c.data = ConfigDict(dict(
      name="fashion_mnist",      # digits | mnist | mnist_json | fashion_mnist (jaxcode.data.images)
      data_dir="",               # '' : the set's default (Fashion-MNIST: Debian's folder)
      image_size=28,             # side the networks are built for; must match the images
      n_train=0,                 # training images used (0: the whole training pool)
      n_eval=1000,               # held-out images for accuracy / denoising loss
      batch=64))                 # images per step (a multiple of the data axis)
  c.cnn = ConfigDict(dict(
      n_blocks=2,                # residual blocks; the width is matched to each family point
      stem_stride=2))            # stem conv stride (2: 28x28 -> 14x14 before the blocks)
  c.denoiser = ConfigDict(dict(
      arch="conv",               # conv (residual conv net, full resolution) | mlp
      depth=2,                   # residual blocks (conv) or hidden layers (mlp); width matched
      n_time=4,                  # sinusoidal time features (conv: constant input channels)
      diffusion_steps=200,       # DDPM steps T
      beta_1=1e-4,               # linear beta schedule, first ...
      beta_T=0.02))              # ... and last beta
  c.max_params = 0               # family points above this many parameters are skipped (0: none)
  c.min_params = 0               # family points below this many are skipped (0: none): a
                                 # ResNet matched to ~900 parameters has 6 channels, too few
                                 # nodes for the spectrum's radius fit
  c.neuromfa = neuromfa_block()  # S, seeds, null, mode, q grid, T (configs/neuromfa.py)
  c.compare = "excess"           # excess (E - E_null) | raw (E): what the verdict compares
  c.bootstrap = ConfigDict(dict(
      n=2000,                    # bootstrap resamples (points, then seeds within a point)
      seed=0,                    # their generator's seed
      level=0.95))               # two-sided interval level
  if variant == "small":
    c.steps = 128
    c.log_every = 32
    c.data.n_train = 10_000      # of the 60k training images
    c.data.batch = 32
    c.max_params = 60_000        # the family's two smallest points (25k, 57k non-embedding)
  elif variant == "tiny":
    c.steps = 8
    c.log_every = 4
    c.checkpoint_steps = (2, 8)
    c.data.name = "digits"
    c.data.image_size = 8
    c.data.n_eval = 64
    c.data.batch = 16
    c.cnn.n_blocks = 1
    c.cnn.stem_stride = 1        # 8x8 digits: no downsampling in the stem
    c.denoiser.depth = 1
    c.denoiser.diffusion_steps = 50
    c.neuromfa.S = 16
    c.bootstrap.n = 200
  return c


get_config = claim4_block
