"""feature_scan against a brute-force numpy scan of all codes at once: top-k, counts, means,
log10 histogram, intervals and their samples, co-activation partners; planted latents that fire
on one token id only; 8-device sharding; resumption after stops and failures; bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcode import parallel
from jaxcode.analysis import feature_scan as fs
from jaxcode.errors import ConfigError

R, T, D0, V, F = 24, 16, 6, 50, 16        # 24 rows x 16 positions = 6 batches of 64 tokens
N = 64
PLANT = {0: (7, 3), 1: (11, 8), 2: (13, 12)}   # latent: (token id, valid occurrences)
DEAD = 3
SETTINGS = fs.ScanSettings(k_top=5, n_intervals=4, per_interval=3, n_bins=12, log10_min=-1.5,
                           log10_max=0.3, coact_top=4, seed=3)


def problem():
  """Token ids, valid mask, batches and a ReLU encoder whose latents 0-2 fire on one id only."""
  rng = np.random.default_rng(0)
  ids = rng.integers(20, V, (R, T))
  valid = rng.random((R, T)) > 0.1
  valid[:, 0] = False                                       # BOS
  free = [(r, p) for r in range(R) for p in range(1, T) if valid[r, p]]
  spots = rng.permutation(len(free))
  used = 0
  for f, (tok, n) in PLANT.items():
    for s in spots[used:used + n]:
      ids[free[s]] = tok
    used += n
    ids[f, 0] = tok                                         # also on a BOS: never counted
  x = rng.normal(size=(R, T, D0 + len(PLANT)))
  for f, (tok, _) in PLANT.items():
    x[..., D0 + f] = np.where(ids == tok, 0.5 + 2.5 * rng.random((R, T)), 0.0)
  W = np.zeros((D0 + len(PLANT), F))
  b = np.zeros(F)
  for f in PLANT:
    W[D0 + f, f] = 1.0
  W[:D0, DEAD + 1:] = rng.normal(size=(D0, F - DEAD - 1))
  b[DEAD + 1:] = -0.8
  b[DEAD] = -1.0
  Wj, bj = jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)

  def encode(x_ND):
    return jax.nn.relu(x_ND @ Wj + bj)

  flat = np.arange(R * T)
  xs = x.reshape(R * T, -1).astype(np.float32)
  batches = [{"x": xs[i:i + N], "row": (flat[i:i + N] // T).astype(np.int32),
              "pos": (flat[i:i + N] % T).astype(np.int32), "valid": valid.reshape(-1)[i:i + N]}
             for i in range(0, R * T, N)]
  ref64 = np.maximum(xs.astype(np.float64) @ W + b, 0.0)
  return ids, valid, batches, encode, ref64


def reference(codes, valid, s):
  """The scan's numbers from all codes [R*T, F] at once (the codes the scan itself computes)."""
  a = np.where(valid.reshape(-1, 1) & (codes > fs.FIRE), codes, 0.0).T.astype(np.float64)
  fire = a > 0
  order = np.argsort(-a, axis=1, kind="stable")[:, :s.k_top]
  top = np.take_along_axis(a, order, 1)
  ref = {"n_tokens": int(valid.sum()), "top_values": top,
         "top_rows": np.where(top > 0, order // T, -1), "top_pos": np.where(top > 0, order % T, -1),
         "count": fire.sum(1), "max": a.max(1)}
  ref["mean_active"] = a.sum(1) / np.maximum(ref["count"], 1)
  edges = np.linspace(s.log10_min, s.log10_max, s.n_bins + 1)
  ref["hist_counts"] = np.stack([np.histogram(np.clip(np.log10(r[r > 0]), edges[0], edges[-1]),
                                              edges)[0] for r in a])
  C = fire.astype(np.int64) @ fire.T.astype(np.int64)
  np.fill_diagonal(C, -1)
  o = np.argsort(-C, axis=1, kind="stable")[:, :s.coact_top]
  c = np.take_along_axis(C, o, 1)
  ref["coact_top_index"], ref["coact_top_count"] = np.where(c > 0, o, -1), np.maximum(c, 0)
  ref["coact"] = C
  return a, ref


@pytest.fixture(scope="module")
def case():
  ids, valid, batches, encode, ref64 = problem()
  enc = fs._encoder(encode)                  # the very function the scan runs per batch
  codes = np.concatenate([np.asarray(enc(jnp.asarray(b["x"]))) for b in batches])
  np.testing.assert_allclose(codes, ref64, rtol=1e-5, atol=1e-5)
  a, ref = reference(codes, valid, SETTINGS)
  res = fs.scan(batches, encode, F, SETTINGS)
  return dict(ids=ids, valid=valid, batches=batches, encode=encode, a=a, ref=ref, res=res)


def test_keys_shapes_dtypes(case):
  r, s = case["res"], SETTINGS
  k, n, p, b, c = s.k_top, s.n_intervals, s.per_interval, s.n_bins, s.coact_top
  want = {"top_values": ((F, k), np.float32), "top_rows": ((F, k), np.int32),
          "top_pos": ((F, k), np.int32), "count": ((F,), np.int64),
          "density": ((F,), np.float64), "max": ((F,), np.float32),
          "mean_active": ((F,), np.float64), "hist_edges": ((b + 1,), np.float64),
          "hist_counts": ((F, b), np.int64), "interval_edges": ((F, n + 1), np.float32),
          "interval_counts": ((F, n), np.int64), "interval_values": ((F, n, p), np.float32),
          "interval_rows": ((F, n, p), np.int32), "interval_pos": ((F, n, p), np.int32),
          "coact_top_index": ((F, c), np.int32), "coact_top_count": ((F, c), np.int64)}
  ints = {"n_tokens": case["ref"]["n_tokens"], "n_latents": F, "k_top": k, "n_intervals": n,
          "per_interval": p, "n_bins": b}
  assert set(r) == set(want) | set(ints)
  for key, (shape, dtype) in want.items():
    assert r[key].shape == shape and r[key].dtype == dtype, key
  assert {key: r[key] for key in ints} == ints
  assert all(type(r[key]) is int for key in ints)


def test_pass1_matches_brute_force(case):
  r, ref = case["res"], case["ref"]
  np.testing.assert_allclose(r["top_values"], ref["top_values"], rtol=1e-6)
  np.testing.assert_array_equal(r["top_rows"], ref["top_rows"])
  np.testing.assert_array_equal(r["top_pos"], ref["top_pos"])
  assert (r["top_rows"] == -1).any() and np.all((r["top_rows"] == -1) == (r["top_values"] == 0))
  np.testing.assert_array_equal(r["count"], ref["count"])
  np.testing.assert_allclose(r["density"], ref["count"] / ref["n_tokens"], rtol=1e-12)
  np.testing.assert_allclose(r["max"], ref["max"], rtol=1e-6)
  np.testing.assert_allclose(r["mean_active"], ref["mean_active"], rtol=1e-5)
  np.testing.assert_allclose(r["hist_edges"], np.linspace(-1.5, 0.3, 13))
  np.testing.assert_array_equal(r["hist_counts"], ref["hist_counts"])
  assert r["hist_counts"][:, 0].sum() and r["hist_counts"][:, -1].sum()   # clipped ends used
  np.testing.assert_array_equal(r["coact_top_index"], ref["coact_top_index"])
  np.testing.assert_array_equal(r["coact_top_count"], ref["coact_top_count"])
  assert r["count"][DEAD] == 0 and r["max"][DEAD] == 0 and r["mean_active"][DEAD] == 0
  assert (r["top_rows"][DEAD] == -1).all() and (r["coact_top_index"][DEAD] == -1).all()


def test_intervals_match_brute_force(case):
  r, a, s = case["res"], case["a"], SETTINGS
  edges = np.linspace(0, r["max"].astype(np.float64), s.n_intervals + 1, axis=-1)
  np.testing.assert_array_equal(r["interval_edges"], edges.astype(np.float32))
  valid = case["valid"].reshape(-1)
  exact_sets = partial_sets = 0
  for f in range(F):
    e = r["interval_edges"][f]
    for j in range(s.n_intervals):
      low = fs.FIRE if j == 0 else e[j]
      inside = np.flatnonzero((a[f] > low) & (a[f] <= e[j + 1]))
      assert r["interval_counts"][f, j] == inside.size, (f, j)
      rows, pos, vals = (r[k][f, j] for k in ("interval_rows", "interval_pos", "interval_values"))
      used = rows >= 0
      assert used.sum() == min(s.per_interval, inside.size)
      assert (pos[~used] == -1).all() and (vals[~used] == 0).all()
      tok = rows[used] * T + pos[used]
      assert len(set(tok)) == tok.size and valid[tok].all()
      np.testing.assert_array_equal(vals[used], a[f, tok].astype(np.float32))
      assert (vals[used] > low).all() and (vals[used] <= e[j + 1]).all()
      assert set(tok) <= set(inside)
      if inside.size <= s.per_interval:
        assert set(tok) == set(inside)
        exact_sets += inside.size > 0
      else:
        partial_sets += 1
  assert exact_sets and partial_sets           # both regimes were exercised
  np.testing.assert_array_equal(r["interval_counts"].sum(1), r["count"])


def test_planted_latents_point_at_their_token(case):
  r, ids = case["res"], case["ids"]
  for f, (tok, n) in PLANT.items():
    assert r["count"][f] == n
    used = r["top_rows"][f] >= 0
    assert used.sum() == min(n, SETTINGS.k_top)
    assert (ids[r["top_rows"][f][used], r["top_pos"][f][used]] == tok).all()
    assert (r["top_pos"][f][used] > 0).all()                          # the BOS copy never counts
    sampled = r["interval_rows"][f] >= 0
    assert (ids[r["interval_rows"][f][sampled], r["interval_pos"][f][sampled]] == tok).all()


def test_sharded_equals_single_device(case):
  mesh = parallel.make_mesh(data=8, model=1)
  r1, r8 = case["res"], fs.scan(case["batches"], case["encode"], F, SETTINGS, mesh=mesh)
  assert set(r1) == set(r8)
  for key, v in r1.items():
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
      np.testing.assert_allclose(r8[key], v, rtol=1e-5, atol=1e-7, err_msg=key)
    else:
      np.testing.assert_array_equal(r8[key], v, err_msg=key)


def _same(r1, r2):
  assert set(r1) == set(r2)
  for key, v in r1.items():
    np.testing.assert_array_equal(r2[key], v, err_msg=key)


def _meta(path):
  with np.load(path) as z:
    return json.loads(str(z["meta"]))


class _Counting(list):
  """Batches that count reads and raise once at the `fail_at`-th read."""

  def __init__(self, items, fail_at=None):
    super().__init__(items)
    self.reads, self.fail_at = 0, fail_at

  def __getitem__(self, i):
    self.reads += 1
    if self.reads == self.fail_at:
      raise RuntimeError("disk gone")
    return super().__getitem__(i)


def test_resume_after_stops_and_failure(case, tmp_path):
  b, enc = case["batches"], case["encode"]
  full_path = str(tmp_path / "full.npz")
  full = fs.scan(b, enc, F, SETTINGS, state_path=full_path, save_seconds=0)
  _same(case["res"], full)
  again = _Counting(b)
  _same(full, fs.scan(again, enc, F, SETTINGS, state_path=full_path))
  assert again.reads == 1                           # only the check of batches[0]
  path = str(tmp_path / "s.npz")
  assert fs.scan(b, enc, F, SETTINGS, state_path=path, stop_after=3) is None
  assert (_meta(path)["phase"], _meta(path)["next"]) == (1, 3)
  assert fs.scan(b, enc, F, SETTINGS, state_path=path, stop_after=5) is None
  assert (_meta(path)["phase"], _meta(path)["next"]) == (2, 2)
  _same(full, fs.scan(b, enc, F, SETTINGS, state_path=path))
  assert _meta(path)["phase"] == "done"
  path = str(tmp_path / "f.npz")                    # reads: 1 check, 6 pass 1, then pass 2
  failing = _Counting(b, fail_at=1 + 6 + 3)
  with pytest.raises(RuntimeError, match="disk gone"):
    fs.scan(failing, enc, F, SETTINGS, state_path=path, save_seconds=1e9)
  assert (_meta(path)["phase"], _meta(path)["next"]) == (2, 2)
  _same(full, fs.scan(b, enc, F, SETTINGS, state_path=path))


def test_resume_from_periodic_save(case, tmp_path):
  """A crash outside the batch (here in progress) leaves the last periodic save, which resumes."""
  b, enc, path = case["batches"], case["encode"], str(tmp_path / "p.npz")
  calls = []

  def progress(phase, done, total):
    calls.append((phase, done, total))
    if (phase, done) == (1, 4) and len(calls) == 4:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    fs.scan(b, enc, F, SETTINGS, state_path=path, progress=progress, save_seconds=0)
  assert (_meta(path)["phase"], _meta(path)["next"]) == (1, 3)
  _same(case["res"], fs.scan(b, enc, F, SETTINGS, state_path=path, progress=progress))
  assert calls[4:] == [(1, d, 6) for d in range(4, 7)] + [(2, d, 6) for d in range(1, 7)]


def test_state_from_other_scan_refused(case, tmp_path):
  b, enc, path = case["batches"], case["encode"], str(tmp_path / "s.npz")
  assert fs.scan(b, enc, F, SETTINGS, state_path=path, stop_after=1) is None
  other = fs.ScanSettings(**{**SETTINGS.__dict__, "k_top": 6})
  for call, what in ((lambda: fs.scan(b, enc, F, other, state_path=path), "settings.k_top"),
                     (lambda: fs.scan(b[:5], enc, F, SETTINGS, state_path=path), "n_batches")):
    with pytest.raises(ConfigError, match=what) as e:
      call()
    assert "\n" not in str(e.value)
  (tmp_path / "junk.npz").write_text("not a state")
  with pytest.raises(ConfigError, match="not a readable"):
    fs.scan(b, enc, F, SETTINGS, state_path=str(tmp_path / "junk.npz"))


def test_bad_input_one_line_nothing_written(case, tmp_path):
  b, enc, path = case["batches"], case["encode"], tmp_path / "s.npz"
  bad = {"k_top": 0, "n_intervals": 0, "per_interval": 0, "n_bins": 0, "coact_top": 0,
         "log10_min": 0.3}
  calls = [(lambda k=k, v=v: fs.scan(b, enc, F, fs.ScanSettings(**{**SETTINGS.__dict__, k: v}),
                                     state_path=str(path)), k) for k, v in bad.items()]
  no_valid = [{k: v for k, v in b[0].items() if k != "valid"}]
  short_row = [{**b[0], "row": b[0]["row"][:-1]}]
  calls += [(lambda: fs.scan(b, enc, F + 1, SETTINGS, state_path=str(path)), "n_latents=17"),
            (lambda: fs.scan([], enc, F, SETTINGS, state_path=str(path)), "empty"),
            (lambda: fs.scan(no_valid, enc, F, SETTINGS, state_path=str(path)), "valid"),
            (lambda: fs.scan(short_row, enc, F, SETTINGS, state_path=str(path)), "shapes"),
            (lambda: fs.scan([{**b[0], "x": b[0]["x"][:60], "row": b[0]["row"][:60],
                               "pos": b[0]["pos"][:60], "valid": b[0]["valid"][:60]}], enc, F,
                             SETTINGS, mesh=parallel.make_mesh(data=8, model=1)), "multiple")]
  for call, what in calls:
    with pytest.raises(ConfigError, match=what) as e:
      call()
    assert "\n" not in str(e.value), what
    assert not list(tmp_path.iterdir()), what


def test_wide_dictionary_has_no_coactivation():
  rng = np.random.default_rng(1)
  Fw = fs.DENSE_COACT_MAX + 1
  W = jnp.asarray(rng.normal(size=(4, Fw)), jnp.float32)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  batch = {"x": x, "row": np.zeros(8, np.int32), "pos": np.arange(8, dtype=np.int32),
           "valid": np.ones(8, bool)}
  s = fs.ScanSettings(k_top=10, n_intervals=1, per_interval=9, n_bins=4)    # k, p > N = 8
  r = fs.scan([batch], lambda x_ND: jax.nn.relu(x_ND @ W), Fw, s)
  assert r["coact_top_index"] is None and r["coact_top_count"] is None
  count = (np.maximum(x @ np.asarray(W), 0) > fs.FIRE).sum(0)
  np.testing.assert_array_equal(r["count"], count)
  np.testing.assert_array_equal((r["top_rows"] >= 0).sum(1), count)
  np.testing.assert_array_equal((r["interval_rows"] >= 0).sum((1, 2)), count)


def test_interval_samples_are_uniform_and_independent():
  """64 copies of one latent firing on all 64 tokens (4 batches), one interval, 8 samples each:
  the 512 draws spread evenly over batches and tokens, and each copy draws its own subset."""
  from scipy import stats
  copies, p = 64, 8
  x = (1.0 + np.random.default_rng(2).random((64, 1))).astype(np.float32)
  batches = [{"x": x[i:i + 16], "row": np.full(16, i // 16, np.int32),
              "pos": np.arange(16, dtype=np.int32), "valid": np.ones(16, bool)}
             for i in range(0, 64, 16)]
  s = fs.ScanSettings(k_top=1, n_intervals=1, per_interval=p, n_bins=2, coact_top=1)
  r = fs.scan(batches, lambda x_ND: jnp.tile(x_ND, (1, copies)), copies, s)
  assert (r["interval_counts"] == 64).all() and (r["interval_rows"] >= 0).all()
  tok = (r["interval_rows"] * 16 + r["interval_pos"]).reshape(copies, p)
  assert all(len(set(t)) == p for t in tok)                          # without replacement
  assert stats.chisquare(np.bincount(tok.ravel() // 16, minlength=4)).pvalue > 1e-4
  assert stats.chisquare(np.bincount(tok.ravel(), minlength=64)).pvalue > 1e-4
  distinct_pos = np.mean([len(set(t % 16)) for t in tok])           # ~6.2 if keys independent
  assert distinct_pos > 5.0
  assert len({tuple(sorted(t)) for t in tok}) == copies
