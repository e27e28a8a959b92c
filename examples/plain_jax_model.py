"""Susceptibilities of a model written in plain `jax.numpy` (no Flax): a one-layer, two-head causal
attention LM whose params are a nested dict. Run: python examples/plain_jax_model.py

Shape letters: B contexts, T token positions (query; S: key), D model width, H heads, K head width, V vocabulary.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import suscept_jax as sj

try:
  from examples import _synthetic
except ImportError:  # run as a script: python examples/plain_jax_model.py
  import _synthetic

D, H, K = 16, 2, 8  # model width, heads, head width


def init(seed: int = 0) -> dict:
  ks = jax.random.split(jax.random.key(seed), 7)
  normal = lambda k, shape: 0.1 * jax.random.normal(k, shape)  # noqa: E731
  return {"embed": normal(ks[0], (_synthetic.VOCAB, D)), "pos": normal(ks[1], (_synthetic.LENGTH, D)),
          "attn": {"W_Q": normal(ks[2], (H, D, K)), "W_K": normal(ks[3], (H, D, K)),
                   "W_V": normal(ks[4], (H, D, K)), "W_O": normal(ks[5], (H, K, D))},
          "unembed": normal(ks[6], (D, _synthetic.VOCAB))}


def token_loss_fn(params, tokens_BxT):
  """Per-token NLL [B, T-1] of next tokens."""
  x_BxTxD = params["embed"][tokens_BxT[:, :-1]] + params["pos"][: tokens_BxT.shape[1] - 1]
  attn = params["attn"]
  q, k, v = (jnp.einsum("btd,hdk->bhtk", x_BxTxD, attn[w]) for w in ("W_Q", "W_K", "W_V"))
  scores_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(K)
  t = scores_BxHxTxS.shape[-1]
  pattern = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores_BxHxTxS, -jnp.inf), axis=-1)
  x_BxTxD = x_BxTxD + jnp.einsum("bhts,bhsk,hkd->btd", pattern, v, attn["W_O"])
  logp_BxTxV = jax.nn.log_softmax(x_BxTxD @ params["unembed"])
  return -jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def loss_fn(params, tokens_BxT):
  """Per-sample losses [B]: what SGLD samples with and χ measures."""
  return token_loss_fn(params, tokens_BxT).mean(axis=1)


def train(params, data, steps: int, seed: int = 0):
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(lambda p: loss_fn(p, batch).mean())(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    params, state = step(params, state, data[rng.integers(len(data), size=64)])
  return params


def main(*, train_steps: int = 300, num_chains: int = 4, num_draws: int = 100, batch_size: int = 64,
         num_contexts: int = 8) -> dict:
  t0 = time.perf_counter()
  base, probes = _synthetic.datasets()
  params = train(init(), base, train_steps)
  print(f"trained: loss {float(loss_fn(params, base).mean()):.3f} nats")
  # Components: a regex over parameter paths (all of the attention), and a hand-made mask (head 0 only).
  attention = sj.regex_mask(params, r"attn/W_.")
  head0 = {"embed": 0, "pos": 0, "unembed": 0,
           "attn": {w: (np.arange(H) == 0).reshape(H, 1, 1) for w in ("W_Q", "W_K", "W_V", "W_O")}}
  print("attention frees", sj.preview(attention, params))
  components = {"full": None, "attention": attention, "head 0": head0}
  cfg = sj.SGLDConfig(num_chains=num_chains, num_draws=num_draws)
  res = sj.estimate_susceptibilities(loss_fn, params, components, base, probes, config=cfg, batch_size=batch_size,
                                     delta_h=0.1, progress=False)
  per_token = sj.estimate_per_token_susceptibilities(loss_fn, token_loss_fn, params, components, base,
                                                     probes["chain_b"][:num_contexts], config=cfg,
                                                     batch_size=batch_size, progress=False)
  llc = sj.estimate_llc(loss_fn, params, base, config=cfg, batch_size=batch_size, progress=False)
  out = _synthetic.report("plain jax.numpy", res, per_token, llc)
  out.update(params=params, components=components, seconds=time.perf_counter() - t0)
  return out


if __name__ == "__main__":
  main()
