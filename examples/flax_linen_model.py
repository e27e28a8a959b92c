"""Susceptibilities of a Flax Linen model: an embedding + MLP next-token model. Its params are what
`model.init` returns; the loss calls `model.apply`. Run: python examples/flax_linen_model.py

Shape letters: B contexts, T token positions, V vocabulary.
"""
import time

import jax
import numpy as np
import optax
from flax import linen as nn

import suscept_jax as sj

try:
  from examples import _synthetic
except ImportError:  # run as a script
  import _synthetic


class NextTokenMLP(nn.Module):
  """Logits of the next token from the current one (a bigram model through a hidden layer)."""
  width: int = 32

  @nn.compact
  def __call__(self, tokens_BxT):
    x = nn.Embed(_synthetic.VOCAB, self.width)(tokens_BxT)
    x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(_synthetic.VOCAB)(x)


MODEL = NextTokenMLP()


def token_loss_fn(variables, tokens_BxT):
  logp_BxTxV = jax.nn.log_softmax(MODEL.apply(variables, tokens_BxT[:, :-1]))
  return -np.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def loss_fn(variables, tokens_BxT):
  return token_loss_fn(variables, tokens_BxT).mean(axis=1)


def main(*, train_steps: int = 300, num_chains: int = 4, num_draws: int = 100, batch_size: int = 64,
         num_contexts: int = 8) -> dict:
  t0 = time.perf_counter()
  base, probes = _synthetic.datasets()
  variables = MODEL.init(jax.random.key(0), base[:2])
  opt = optax.adam(1e-2)
  state = opt.init(variables)

  @jax.jit
  def step(variables, state, batch):
    grads = jax.grad(lambda v: loss_fn(v, batch).mean())(variables)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(variables, updates), state

  rng = np.random.default_rng(0)
  for _ in range(train_steps):
    variables, state = step(variables, state, base[rng.integers(len(base), size=64)])
  print(f"trained: loss {float(loss_fn(variables, base).mean()):.3f} nats; paths {sj.leaf_paths(variables)}")
  # Components: the output layer by regex over Linen's paths, and the embeddings of tokens 0-3 by hand.
  output_layer = sj.regex_mask(variables, r"params/Dense_1/.*")
  first_tokens = jax.tree.map(lambda x: np.zeros((), bool), variables)
  first_tokens["params"]["Embed_0"]["embedding"] = (np.arange(_synthetic.VOCAB) < 4)[:, None]
  print("first tokens frees", sj.preview(first_tokens, variables))
  components = {"full": None, "output layer": output_layer, "embeddings 0-3": first_tokens}
  cfg = sj.SGLDConfig(num_chains=num_chains, num_draws=num_draws)
  res = sj.estimate_susceptibilities(loss_fn, variables, components, base, probes, config=cfg,
                                     batch_size=batch_size, delta_h=0.1, progress=False)
  per_token = sj.estimate_per_token_susceptibilities(loss_fn, token_loss_fn, variables, components, base,
                                                     probes["chain_b"][:num_contexts], config=cfg,
                                                     batch_size=batch_size, progress=False)
  llc = sj.estimate_llc(loss_fn, variables, base, config=cfg, batch_size=batch_size, progress=False)
  out = _synthetic.report("Flax Linen", res, per_token, llc)
  out.update(params=variables, components=components, seconds=time.perf_counter() - t0)
  return out


if __name__ == "__main__":
  main()
