"""Susceptibilities of a Flax NNX model. The kernels take a params pytree: `nnx.split` gives the graph and
the state, `nnx.to_pure_dict` a plain dict, and the loss rebuilds the module from the dict it is handed
(at trace time only). Run: python examples/flax_nnx_model.py

Shape letters: B contexts, T token positions, V vocabulary.
"""
import time

import jax
import numpy as np
import optax
from flax import nnx

import suscept_jax as sj

try:
  from examples import _synthetic
except ImportError:  # run as a script
  import _synthetic


class NextTokenMLP(nnx.Module):
  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(_synthetic.VOCAB, width, rngs=rngs)
    self.hidden = nnx.Linear(width, width, rngs=rngs)
    self.out = nnx.Linear(width, _synthetic.VOCAB, rngs=rngs)

  def __call__(self, tokens_BxT):
    return self.out(nnx.relu(self.hidden(self.embed(tokens_BxT))))


GRAPH, ABSTRACT_STATE = nnx.split(nnx.eval_shape(lambda: NextTokenMLP(32, rngs=nnx.Rngs(0))))


def bind(params: dict) -> NextTokenMLP:
  """The module with these params (a fresh state each call: replace_by_pure_dict mutates)."""
  state = jax.tree.map(lambda x: x, ABSTRACT_STATE)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(GRAPH, state)


def token_loss_fn(params, tokens_BxT):
  logp_BxTxV = jax.nn.log_softmax(bind(params)(tokens_BxT[:, :-1]))
  return -np.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def loss_fn(params, tokens_BxT):
  return token_loss_fn(params, tokens_BxT).mean(axis=1)


def main(*, train_steps: int = 300, num_chains: int = 4, num_draws: int = 100, batch_size: int = 64,
         num_contexts: int = 8) -> dict:
  t0 = time.perf_counter()
  base, probes = _synthetic.datasets()
  params = nnx.to_pure_dict(nnx.state(NextTokenMLP(32, rngs=nnx.Rngs(0)), nnx.Param))
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(lambda p: loss_fn(p, batch).mean())(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  rng = np.random.default_rng(0)
  for _ in range(train_steps):
    params, state = step(params, state, base[rng.integers(len(base), size=64)])
  print(f"trained: loss {float(loss_fn(params, base).mean()):.3f} nats; paths {sj.leaf_paths(params)}")
  # Components: the hidden layer by regex, and hidden units 0-7 (their rows of `out`) by hand.
  hidden = sj.regex_mask(params, r"hidden/.*")
  units = jax.tree.map(lambda x: np.zeros((), bool), params)
  units["out"]["kernel"] = (np.arange(32) < 8)[:, None]
  print("units 0-7 free", sj.preview(units, params))
  components = {"full": None, "hidden layer": hidden, "units 0-7 out": units}
  cfg = sj.SGLDConfig(num_chains=num_chains, num_draws=num_draws)
  res = sj.estimate_susceptibilities(loss_fn, params, components, base, probes, config=cfg, batch_size=batch_size,
                                     delta_h=0.1, progress=False)
  per_token = sj.estimate_per_token_susceptibilities(loss_fn, token_loss_fn, params, components, base,
                                                     probes["chain_b"][:num_contexts], config=cfg,
                                                     batch_size=batch_size, progress=False)
  llc = sj.estimate_llc(loss_fn, params, base, config=cfg, batch_size=batch_size, progress=False)
  out = _synthetic.report("Flax NNX", res, per_token, llc)
  out.update(params=params, components=components, seconds=time.perf_counter() - t0)
  return out


if __name__ == "__main__":
  main()
