"""Classification tasks (jaxcode/data/tasks.py).

References we did not write: scikit-learn's bundled digits; the idx format
(LeCun's MNIST page: big-endian magic 0x00000803 / 0x00000801, then dimensions)
and the CIFAR-10 binary format (1 label byte + 3072 pixel bytes per record),
written here byte by byte with struct/numpy.
"""

import gzip
import os
import struct

import numpy as np
import pytest

from jaxcode.data import tasks
from jaxcode.errors import ConfigError


def test_toy_task_orthogonal_and_proportions():
  t = tasks.toy_task(16, n_test=10, seed=3)
  np.testing.assert_allclose(t.x_train @ t.x_train.T, 16 * np.eye(16), atol=1e-4)
  assert np.bincount(t.labels_train).tolist() == [8, 4, 4]
  assert t.labels_train[:8].tolist() == [0] * 8      # first half is class 0
  np.testing.assert_array_equal(t.y_train.argmax(1), t.labels_train)
  assert t.x_test.shape == (10, 16)


def test_class_proportions_must_sum_to_one():
  with pytest.raises(ConfigError, match=r"sum to 0\.9"):
    tasks.toy_task(16, proportions=(0.5, 0.2, 0.2))
  assert tasks.class_counts(10, (0.5, 0.25, 0.25)).sum() == 10


def test_digits_balanced_and_normalized():
  t = tasks.digits_task(n_train=100, n_test=50, seed=0)
  assert t.x_train.shape == (100, 64) and t.x_test.shape == (50, 64)
  assert np.bincount(t.labels_train).tolist() == [10] * 10
  np.testing.assert_allclose((t.x_train ** 2).sum(1), 64, rtol=1e-4)
  assert set(t.labels_test.tolist()) <= set(range(10))


def _write_idx(path, arr):
  header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  d = tmp_path / "mnist"
  d.mkdir()
  imgs = rng.integers(0, 256, (40, 28, 28))
  labels = np.arange(40) % 10
  for name, arr in zip(tasks.MNIST_FILES, (imgs, labels, imgs[:20], labels[:20])):
    _write_idx(str(d / name), arr)
  xtr, ltr, xte, lte = tasks.load_mnist(str(tmp_path))
  np.testing.assert_array_equal(xtr.reshape(40, 28, 28), imgs)
  np.testing.assert_array_equal(ltr, labels)
  t = tasks.mnist_task(n_train=20, n_test=10, data_dir=str(tmp_path))
  assert t.x_train.shape == (20, 784) and np.bincount(t.labels_train).tolist() == [2] * 10


def test_cifar_binary_files(tmp_path):
  rng = np.random.default_rng(1)
  d = tmp_path / tasks.CIFAR_DIR
  d.mkdir()
  want = {}
  for name in tasks.CIFAR_TRAIN + tasks.CIFAR_TEST:
    lab = (np.arange(20) % 10).astype(np.uint8)
    pix = rng.integers(0, 256, (20, 3072)).astype(np.uint8)
    np.concatenate([lab[:, None], pix], 1).tofile(str(d / name))
    want[name] = pix
  xtr, ltr, xte, lte = tasks.load_cifar10(str(tmp_path))
  assert xtr.shape == (100, 3072) and xte.shape == (20, 3072)
  np.testing.assert_array_equal(xte, want["test_batch.bin"])
  np.testing.assert_array_equal(ltr[:10], np.arange(10))


def test_missing_files_one_line(tmp_path):
  for fn, needle in ((tasks.load_mnist, "train-images-idx3-ubyte.gz"),
                     (tasks.load_cifar10, "cifar-10-batches-bin")):
    with pytest.raises(ConfigError) as e:
      fn(str(tmp_path))
    msg = str(e.value)
    assert needle in msg and str(tmp_path) in msg and "\n" not in msg
  assert os.path.isdir(str(tmp_path))
