"""Coding schemes of wide Bayesian networks (layer 3; notes/geometry.md part A).

Inputs are posterior samples of one network's feature layer: readouts a_NM and
activations phi_PN = phi(z^L(x_mu)) on the P training inputs, with integer
labels. All functions are host numpy.

Definitions used here (paper Table 1, made operational):

* response r_ic: mean of phi_i over the training inputs of class c.
* neuron i *carries a code* when max_c |r_ic| >= TAU_CODE x max_{j,c} |r_jc|
  (a population-relative threshold, independent of the units of phi).
* code of neuron i: the classes with r_ic > TAU_CODE x max_{j,c} |r_jc|, i.e. the
  classes that drive it above the same population threshold, written as a 0/1
  string ('110' = classes 0 and 1). A coding neuron may have code '000' (an erf
  neuron saturated negative on every class).
* coding scheme: the histogram of codes over coding neurons.
* contribution c_i = ||a_i|| x rms_mu phi_i(x_mu), neuron i's share of the output.
  top_share = sum of the m largest c_i / sum_i c_i (m = number of classes);
  participation = (sum_i c_i)^2 / (N sum_i c_i^2), the fraction of neurons that
  effectively contribute (N-independent for a homogeneous population).
* discreteness: per output k, the variance of a_ik left after subtracting the
  mean of its sign group (a_ik > 0 or < 0), over the total variance of a_ik,
  averaged over k. Gaussian readouts give 1 - 2/pi = 0.363; readouts sitting on
  two values +-v give 0.
* outlier_readout_ratio: median ||a|| of the m top neurons over the median of
  the rest (grows like sqrt(N) for sparse codes).

Classification (`classify`) of the statistics averaged over samples:
  sparse     if coding_fraction <= SPARSE_CODING_FRACTION and participation <=
             SPARSE_PARTICIPATION (few neurons respond strongly, and the readout
             rests on few neurons),
  redundant  elif discreteness <= REDUNDANT_DISCRETENESS (readouts on a few
             values, each shared by many neurons),
  analog     otherwise (continuous readouts, every neuron contributes).
The thresholds sit between the values the three nonlinearities give on the toy
task at N = 48 to 256 (measured: coding_fraction linear 0.31-0.43, erf 1.0, ReLU
0.09-0.17; participation linear 0.63-0.67, erf 0.98, ReLU 0.36-0.39;
discreteness linear 0.34-0.37, erf 0.03-0.06, ReLU 0.55-0.66) and are written
into results.json.
"""

from __future__ import annotations

import numpy as np

from jaxcode.errors import ConfigError

TAU_CODE = 0.5
SPARSE_CODING_FRACTION = 0.22
SPARSE_PARTICIPATION = 0.5
REDUNDANT_DISCRETENESS = 0.2
GAUSSIAN_DISCRETENESS = 1 - 2 / np.pi


# ------------------------------------------------------------ single neurons

def class_responses(phi_PN: np.ndarray, labels_P: np.ndarray, n_classes: int) -> np.ndarray:
  """r_NC: mean activation of each neuron over the training inputs of each class."""
  phi = np.asarray(phi_PN, np.float64)
  onehot = np.eye(n_classes)[labels_P]                      # P x C
  counts = onehot.sum(0)
  if np.any(counts == 0):
    raise ConfigError(f"class counts={counts.astype(int).tolist()}: every class needs a point")
  return phi.T @ onehot / counts


def codes(r_NC: np.ndarray, tau: float = TAU_CODE) -> tuple[np.ndarray, np.ndarray]:
  """(coding mask _N, binary codes _NC) by the population threshold (module docstring)."""
  thr = tau * max(np.abs(r_NC).max(), 1e-300)
  coding = np.abs(r_NC).max(1) >= thr
  return coding, (r_NC > thr) & coding[:, None]


def code_strings(binary_NC: np.ndarray) -> list[str]:
  return ["".join("1" if b else "0" for b in row) for row in binary_NC]


def code_histogram(coding_N: np.ndarray, binary_NC: np.ndarray) -> dict[str, int]:
  """Count of each code over the coding neurons, most frequent first."""
  strs = [s for s, c in zip(code_strings(binary_NC), coding_N) if c]
  if not strs:
    return {}
  keys, counts = np.unique(strs, return_counts=True)
  order = np.argsort(-counts, kind="stable")
  return {str(keys[i]): int(counts[i]) for i in order}


def discreteness(a_NM: np.ndarray) -> float:
  """Mean over outputs of the within-sign-group variance fraction of the readouts."""
  a = np.asarray(a_NM, np.float64)
  out = []
  for k in range(a.shape[1]):
    v = a[:, k]
    total = ((v - v.mean()) ** 2).sum()
    within = sum(((v[g] - v[g].mean()) ** 2).sum() for g in (v > 0, v <= 0) if g.any())
    out.append(within / max(total, 1e-300))
  return float(np.mean(out))


def scheme_statistics(a_NM: np.ndarray, phi_PN: np.ndarray, labels_P: np.ndarray,
                      n_classes: int) -> dict:
  """The statistics behind the classification for one posterior sample."""
  a = np.asarray(a_NM, np.float64)
  phi = np.asarray(phi_PN, np.float64)
  n = a.shape[0]
  r = class_responses(phi, labels_P, n_classes)
  coding, binary = codes(r)
  contrib = np.linalg.norm(a, axis=1) * np.sqrt((phi ** 2).mean(0))
  order = np.argsort(-contrib)
  top = order[:n_classes]
  hist = code_histogram(coding, binary)
  an = np.linalg.norm(a, axis=1)
  bulk = an[order[n_classes:]]
  strs = code_strings(binary)
  return {
      "top_share": float(contrib[top].sum() / max(contrib.sum(), 1e-300)),
      "participation": float(contrib.sum() ** 2 / max((contrib ** 2).sum(), 1e-300) / n),
      "discreteness": discreteness(a),
      "coding_fraction": float(coding.mean()),
      "largest_code_group": float(max(hist.values()) / n if hist else 0.0),
      "n_distinct_codes": len(hist),
      "outlier_readout_ratio": float(np.median(an[top]) / max(np.median(bulk), 1e-300))
      if bulk.size else float("nan"),
      "top_codes": [strs[i] if coding[i] else "-" for i in top],
      "code_histogram": hist,
  }


NUMERIC_STATS = ("top_share", "participation", "discreteness", "coding_fraction",
                 "largest_code_group", "n_distinct_codes", "outlier_readout_ratio")


def average_statistics(per_sample: list[dict]) -> dict:
  """Means (and standard errors) of the numeric statistics over samples; histograms summed."""
  out = {}
  for k in NUMERIC_STATS:
    v = np.array([s[k] for s in per_sample], np.float64)
    out[k] = float(v.mean())
    out[k + "_sem"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
  hist, tops = {}, {}
  for s in per_sample:
    for c, v in s["code_histogram"].items():
      hist[c] = hist.get(c, 0) + v
    for c in s["top_codes"]:
      tops[c] = tops.get(c, 0) + 1
  out["code_histogram"] = dict(sorted(hist.items(), key=lambda kv: -kv[1]))
  out["top_neuron_codes"] = dict(sorted(tops.items(), key=lambda kv: -kv[1]))
  out["n_samples"] = len(per_sample)
  return out


def classify(stats: dict) -> str:
  """'sparse', 'redundant' or 'analog' from averaged statistics (module docstring)."""
  if (stats["coding_fraction"] <= SPARSE_CODING_FRACTION
      and stats["participation"] <= SPARSE_PARTICIPATION):
    return "sparse"
  if stats["discreteness"] <= REDUNDANT_DISCRETENESS:
    return "redundant"
  return "analog"


def criteria() -> dict:
  return {"tau_code": TAU_CODE, "sparse_if_coding_fraction_le": SPARSE_CODING_FRACTION,
          "and_participation_le": SPARSE_PARTICIPATION,
          "redundant_if_discreteness_le": REDUNDANT_DISCRETENESS,
          "gaussian_discreteness": GAUSSIAN_DISCRETENESS,
          "order": "sparse, then redundant, else analog"}


# ------------------------------------------------------------ kernels and predictors

def empirical_kernel(phi_AN: np.ndarray, phi_BN: np.ndarray | None = None) -> np.ndarray:
  """(1/N) sum_i phi_i(x) phi_i(x') of one sample."""
  phi_BN = phi_AN if phi_BN is None else phi_BN
  return np.asarray(phi_AN, np.float64) @ np.asarray(phi_BN, np.float64).T / phi_AN.shape[1]


def _feature_expectation(kxx, kyy, kxy, nonlinearity):
  """E[phi(u) phi(v)] for (u, v) ~ N(0, [[kxx, kxy], [kxy, kyy]]), closed forms."""
  if nonlinearity == "linear":
    return kxy
  if nonlinearity == "erf":
    return 2.0 / np.pi * np.arcsin(np.clip(2 * kxy / np.sqrt((1 + 2 * kxx) * (1 + 2 * kyy)),
                                           -1.0, 1.0))
  if nonlinearity == "relu":
    norm = np.sqrt(kxx * kyy)
    cos = np.clip(kxy / np.maximum(norm, 1e-300), -1.0, 1.0)
    th = np.arccos(cos)
    return norm / (2 * np.pi) * (np.sin(th) + (np.pi - th) * cos)
  raise ConfigError(f"nonlinearity={nonlinearity!r}: expected linear, erf or relu")


def nngp_feature_kernel(x_AD: np.ndarray, x_BD: np.ndarray, nonlinearity: str, depth: int,
                        w_var: float) -> np.ndarray:
  """K_L(x, x') = E[phi(z^L(x)) phi(z^L(x'))] of the infinitely wide prior network.

  z^1 has covariance w_var x.x'/N0; z^{l+1} has covariance w_var E[phi phi] of
  layer l. Closed forms: linear; erf (arcsine kernel, Williams 1997); ReLU
  (arc-cosine kernel of degree 1, Cho & Saul 2009).
  """
  xa, xb = np.asarray(x_AD, np.float64), np.asarray(x_BD, np.float64)
  n0 = xa.shape[1]
  kxy = w_var * xa @ xb.T / n0
  kxx = w_var * (xa ** 2).sum(1) / n0
  kyy = w_var * (xb ** 2).sum(1) / n0
  for layer in range(depth):
    fxy = _feature_expectation(kxx[:, None], kyy[None, :], kxy, nonlinearity)
    if layer == depth - 1:
      return fxy
    fxx = _feature_expectation(kxx, kxx, kxx, nonlinearity)
    fyy = _feature_expectation(kyy, kyy, kyy, nonlinearity)
    kxy, kxx, kyy = w_var * fxy, w_var * fxx, w_var * fyy
  raise ConfigError(f"depth={depth}: expected >= 1")


def gp_predictor(k_train_PP: np.ndarray, k_test_TP: np.ndarray, k_test_diag_T: np.ndarray,
                 y_PM: np.ndarray, prior_scale: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
  """Posterior mean _TM and variance _T of f ~ GP(0, s K) given y = f + noise of variance 1/beta.

  This is the lazy network's posterior at inverse temperature beta (s = the
  readout prior variance).
  """
  k = prior_scale * np.asarray(k_train_PP, np.float64)
  ks = prior_scale * np.asarray(k_test_TP, np.float64)
  a = k + np.eye(k.shape[0]) / beta
  chol = np.linalg.cholesky(a)
  alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y_PM))
  mean = ks @ alpha
  v = np.linalg.solve(chol, ks.T)
  var = prior_scale * np.asarray(k_test_diag_T, np.float64) - (v ** 2).sum(0)
  return mean, np.maximum(var, 0.0)


def per_class_errors(mean_TM: np.ndarray, second_moment_T: np.ndarray | None,
                     y_TM: np.ndarray, labels_T: np.ndarray, n_classes: int) -> dict:
  """Per class: generalisation error eps_c = mean over test x of class c of
  <||f(x) - y||^2> (= ||<f> - y||^2 + sum of output variances; pass the summed
  output variance as `second_moment_T`, None for zero), and the classification
  error of the mean predictor (argmax <f> != label)."""
  bias = ((mean_TM - y_TM) ** 2).sum(1)
  var = np.zeros_like(bias) if second_moment_T is None else np.asarray(second_moment_T)
  wrong = mean_TM.argmax(1) != labels_T
  out = {"gen_error": [], "bias": [], "class_error": []}
  for c in range(n_classes):
    sel = labels_T == c
    n = max(sel.sum(), 1)
    out["gen_error"].append(float((bias[sel] + var[sel]).sum() / n))
    out["bias"].append(float(bias[sel].sum() / n))
    out["class_error"].append(float(wrong[sel].sum() / n))
  out["gen_error_mean"] = float((bias + var).mean())
  out["class_error_mean"] = float(wrong.mean())
  return out


def neural_collapse(phi_PN: np.ndarray, labels_P: np.ndarray, n_classes: int) -> float:
  """NC1 = tr(Sigma_W Sigma_B^+) / C (Papyan, Han & Donoho 2020) of features phi_PN.

  Sigma_W: within-class covariance; Sigma_B = D^T D / C with D the C x N matrix of
  centred class means. Computed in the C-dimensional span of D:
  tr(Sigma_W Sigma_B^+) = C tr((D Sigma_W D^T)(D D^T)^{+2}), so the cost is O(P N C).
  """
  h = np.asarray(phi_PN, np.float64)
  means = np.stack([h[labels_P == c].mean(0) for c in range(n_classes)])
  d = means - h.mean(0)
  dev = h - means[labels_P]
  proj = d @ dev.T                                          # C x P
  a = proj @ proj.T / h.shape[0]                            # D Sigma_W D^T
  g = np.linalg.pinv(d @ d.T, rcond=1e-10, hermitian=True)
  return float(np.trace(a @ g @ g))


# ------------------------------------------------------------ every hidden layer

def kernel_alignment(k_PP: np.ndarray, labels_P: np.ndarray, n_classes: int) -> float:
  """Centred kernel alignment of K with the label kernel Y Y^T (Cortes et al. 2012):
  <HKH, HLH>_F / (|HKH| |HLH|); 1 when K is the label kernel, near 0 for no class structure."""
  k = np.asarray(k_PP, np.float64)
  y = np.eye(n_classes)[labels_P]
  h = np.eye(len(k)) - 1.0 / len(k)
  kc, lc = h @ k @ h, h @ (y @ y.T) @ h
  return float((kc * lc).sum() / max(np.linalg.norm(kc) * np.linalg.norm(lc), 1e-300))


def layer_statistics(phi_PN: np.ndarray, labels_P: np.ndarray, n_classes: int) -> dict:
  """Codes of one hidden layer (no readout needed): coding fraction, number of distinct
  codes, largest code group, mean number of classes per code, NC1 and kernel alignment."""
  phi = np.asarray(phi_PN, np.float64)
  r = class_responses(phi, labels_P, n_classes)
  coding, binary = codes(r)
  hist = code_histogram(coding, binary)
  n = phi.shape[1]
  return {"coding_fraction": float(coding.mean()),
          "n_distinct_codes": len(hist),
          "largest_code_group": float(max(hist.values()) / n if hist else 0.0),
          "classes_per_code": float(binary[coding].sum(1).mean()) if coding.any() else 0.0,
          "nc1": neural_collapse(phi, labels_P, n_classes),
          "kernel_alignment": kernel_alignment(empirical_kernel(phi), labels_P, n_classes)}


LAYER_STATS = ("coding_fraction", "n_distinct_codes", "largest_code_group", "classes_per_code",
               "nc1", "kernel_alignment")


def average_layers(per_sample: list[list[dict]]) -> list[dict]:
  """Per layer, the mean of each layer statistic over samples (per_sample[s][layer])."""
  depth = len(per_sample[0])
  return [{k: float(np.mean([s[l][k] for s in per_sample])) for k in LAYER_STATS} | {"layer": l + 1}
          for l in range(depth)]
