"""Models with known answers, for checking the estimators (tests, benchmarks, a user's own sanity checks).

Quadratic per-sample loss ℓ(w; a, s) = ½ Σ_i s_i (w_i − a_i)². Over a dataset with mean curvature h the
posterior of the (discretised) SGLD chain is an exact Gaussian AR(1) process, so the LLC and χ of eq. 41
have closed forms (full batches; with mini-batches they hold up to the batch noise of the gradient).
"""
import jax.numpy as jnp
import numpy as np

from suscept_jax.sgld import SGLDConfig


def quadratic_loss(params, batch):
  """Per-sample losses [B] of ℓ(w; a, s) = ½ Σ_i s_i (w_i − a_i)².

  params {"w": [D]}, batch {"a", "s": [B, D]}."""
  return 0.5 * jnp.sum(batch["s"] * (params["w"] - batch["a"]) ** 2, axis=-1)


def quadratic_dataset(rng: np.random.Generator, num_samples: int, curvature, spread: float) -> dict:
  """Samples with targets a ~ N(0, spread²) and curvature s (broadcast [D], or [N, D] per sample)."""
  curvature = np.asarray(curvature, np.float64)
  dim = curvature.shape[-1]
  return {"a": (spread * rng.normal(size=(num_samples, dim))).astype(np.float32),
          "s": np.broadcast_to(curvature, (num_samples, dim)).astype(np.float32).copy()}


def quadratic_minimum(data) -> dict:
  """w* = the minimiser of the mean loss over `data` (curvature-weighted mean of the targets)."""
  return {"w": (data["s"] * data["a"]).sum(0) / data["s"].sum(0)}


def stationary_variance(h, config: SGLDConfig):
  """Per-coordinate variance of discretised SGLD on U = nβ·½h u² + γ/2 u²: 1/(a(1 − εa/4)), a = nβh + γ."""
  a = config.nbeta * np.asarray(h, np.float64) + config.localization
  return 1.0 / (a * (1.0 - config.step_size * a / 4.0))


def quadratic_llc(h, free, config: SGLDConfig) -> float:
  """nβ·E[φ] = nβ·½ Σ_{i free} h_i v_i: the (weight-refined) LLC of the quadratic, discretisation included."""
  v = stationary_variance(h, config)
  return float(config.nbeta * 0.5 * np.sum((np.asarray(h) * v)[np.asarray(free, bool)]))


def quadratic_chi(h, h_probe, free, realised_fraction: float, config: SGLDConfig) -> float:
  """χ_C of eq. 41 when φ and ΔL are quadratic forms under the chain's stationary Gaussian.

  u_i ~ N(0, v_i) independently. φ = ½Σ_{i∈C} h_i u_i²; E[ΔL | u] = f·(½Σ c_i u_i² + linear + const) with
  c = h' − h and f the realised probe fraction. Then χ_C = −f·[½Σ_C h c v² − (½Σ_C h v)(½Σ_{∉C} c v)].
  """
  h, free = np.asarray(h, np.float64), np.asarray(free, bool)
  c = np.asarray(h_probe, np.float64) - h
  v = stationary_variance(h, config)
  return float(-realised_fraction * (0.5 * np.sum((h * c * v**2)[free])
                                     - 0.5 * np.sum((h * v)[free]) * 0.5 * np.sum((c * v)[~free])))


def quadratic_loss_covariance(queries, samples, w_star, h, free, config: SGLDConfig) -> np.ndarray:
  """[Q, S] posterior covariance of per-sample losses (the Bayesian influence function, up to sign) under
  full-batch SGLD: w = w* + u, u_i ~ N(0, v_i) on the free coordinates. With b = w* − a,
  ℓ = ½Σ s_i (u_i + b_i)², so Cov(ℓ_q, ℓ_x) = Σ_{i free} s_qi s_xi (½ v_i² + b_qi b_xi v_i)."""
  v = np.where(np.asarray(free, bool), stationary_variance(h, config), 0.0)
  w = np.asarray(w_star["w"] if isinstance(w_star, dict) else w_star, np.float64)
  sq, bq = np.asarray(queries["s"], np.float64), w - np.asarray(queries["a"], np.float64)
  sx, bx = np.asarray(samples["s"], np.float64), w - np.asarray(samples["a"], np.float64)
  return (sq * 0.5 * v**2) @ sx.T + (sq * bq * v) @ (sx * bx).T


def quadratic_minibatch_prediction(base, probe, free, *, config: SGLDConfig, batch_size: int,
                                   realised_fraction: float) -> tuple[float, float]:
  """(LLC, χ of eq. 41) of the quadratic under mini-batch SGLD, to first order in 1/batch_size.

  Two mini-batch effects on top of the full-batch closed forms (w* = the minimiser over all of `base`;
  b_j = w* − a_j; batches drawn without replacement from N samples; each coordinate independent):
  - the gradient noise of the batch, variance σ²_g = (N−n)/(N−1)·mean_j (s_j b_j)²/n per coordinate,
    widens the stationary variance: v = (ε + ε²nβ²σ²_g/4) / (1 − (1 − εa/2)²), a = nβh + γ;
  - the base samples replaced by probe samples enter both φ (through the batch's linear term) and ΔL, so
    −Cov(φ, ΔL) gains f/n·Σ_{i∈C} v_i·(N−n)/(N−1)·mean_j (s_ji b_ji)² (f the realised probe fraction),
    and the curvatures they share give −¾·f/n·Σ_{i∈C} var(s_i)·(N−n)/(N−1)·v_i² (small).
  Measured agreement (benchmarks/error_bar_calibration.py): χ within its Monte Carlo error, the LLC ≈ 2 %
  above (batches drawn without replacement within an epoch correlate w_t with the next batch's gradient,
  which this first-order form leaves out). Per-chain estimates also carry O(τ/T) finite-chain bias.
  """
  s, a = np.asarray(base["s"], np.float64), np.asarray(base["a"], np.float64)
  num, n = s.shape[0], batch_size
  fpc = (num - n) / (num - 1)
  w_star = (s * a).sum(0) / s.sum(0)
  h, c = s.mean(0), np.asarray(probe["s"], np.float64).mean(0) - s.mean(0)
  free = np.asarray(free, bool)
  mu2 = ((s * (w_star - a)) ** 2).mean(0)
  eps, nbeta = config.step_size, config.nbeta
  rate = nbeta * h + config.localization
  v = (eps + eps**2 * nbeta**2 * fpc * mu2 / n / 4) / (1 - (1 - eps * rate / 2) ** 2)
  f = realised_fraction
  llc = nbeta * 0.5 * np.sum((h * v)[free])
  chi = (-f * (0.5 * np.sum((h * c * v**2)[free]) - 0.5 * np.sum((h * v)[free]) * 0.5 * np.sum((c * v)[~free]))
         + f / n * fpc * np.sum((v * mu2)[free]) - 0.75 * f / n * fpc * np.sum((s.var(0) * v**2)[free]))
  return float(llc), float(chi)


def normal_crossing_posterior_llc(x, powers, nbeta: float, box: float = 1.0) -> float:
  """nβ·E[L(w) − L(0)] under p(w) ∝ exp(−nβ·(L(w) − L(0))) on [−box, box]², exactly (by quadrature).

  The model f(x; w) = x·w1^k1·w2^k2 with squared error, on data whose noise y is orthogonal to x, has
  L(w) − L(0) = S·w1^(2k1)·w2^(2k2), S = mean(x²). The integral over w1 has a closed form through the
  lower incomplete gamma function, ∫_0^B e^{−b t^p} t^{pm} dt = b^{−(m + 1/p)}·γ(m + 1/p, b·B^p)/p, so
  only a 1-D quadrature over w2 remains (the integrand is even in both coordinates). As n → ∞ this tends
  to the learning coefficient λ = min 1/(2k_i); at finite n the multiplicity-2 cases are well above it.
  """
  import scipy.integrate
  import scipy.special

  k1, k2 = sorted(powers)
  a = nbeta * float(np.mean(np.square(np.asarray(x, np.float64))))
  if k1 == 0:  # w1 does not enter: a 1-D posterior in w2
    p = 2 * k2
    num = scipy.integrate.quad(lambda t: a * t**p * np.exp(-a * t**p), 0, box, points=[a ** (-1 / p)], limit=200)[0]
    den = scipy.integrate.quad(lambda t: np.exp(-a * t**p), 0, box, points=[a ** (-1 / p)], limit=200)[0]
    return num / den
  p, q = 2 * k1, 2 * k2

  def inner(m, t2):  # ∫_0^box (a·t2^q·t1^p)^m e^{−a·t2^q·t1^p} dt1, in closed form
    b = a * t2**q
    if b == 0.0:
      return box if m == 0 else 0.0
    s = m + 1.0 / p
    return b ** (-1.0 / p) * scipy.special.gamma(s) * scipy.special.gammainc(s, b * box**p) / p

  kw = dict(points=[a ** (-1 / q), box * 1e-3], limit=400, epsabs=0.0, epsrel=1e-10)
  num = scipy.integrate.quad(lambda t: inner(1, t), 0, box, **kw)[0]
  den = scipy.integrate.quad(lambda t: inner(0, t), 0, box, **kw)[0]
  return num / den
