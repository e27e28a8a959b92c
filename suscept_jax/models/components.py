"""Component specs for the attention-only transformer -> mask pytrees for the sampler.

Specs (stable strings that tables and plots use as names):
  "full"              every parameter
  "l{L}h{H}"          head H of layer L: its slices of W_Q, W_K, W_V, b_Q, b_K, b_V and W_O
  "l{L} attn"         every parameter of layer L's attention (all heads and b_O)
  "l{L} ln1"          layer L's LayerNorm
  "embed", "pos_embed", "unembed", "ln_final"
  "re:<regex>"        every leaf whose slash path (e.g. blocks/0/attn/W_Q) fully matches the regex
"""
import re

import jax
import numpy as np

from suscept_jax import masks
from suscept_jax.models.config import HEAD_LEAVES, ModelConfig

_HEAD = re.compile(r"l(\d+)h(\d+)")
_LAYER_PART = re.compile(r"l(\d+) ?(attn|ln1)")
_WHOLE = {"embed": r"embed/W_E", "pos_embed": r"pos_embed/W_pos", "unembed": r"unembed/.*", "ln_final": r"ln_final/.*"}
SPEC_HELP = ("'full', 'l{L}h{H}', 'l{L} attn', 'l{L} ln1', 'embed', 'pos_embed', 'unembed', 'ln_final', "
             "or 're:<regex over parameter paths>'")


def default_components(config: ModelConfig) -> list[str]:
  """Every attention head plus the full model (the paper's set)."""
  return ["full"] + config.head_names


def _check_layer(spec: str, layer: int, config: ModelConfig) -> None:
  if not 0 <= layer < config.n_layers:
    raise ValueError(f"component {spec!r}: layer {layer} does not exist (the model has {config.n_layers} layers)")


def _head_mask(params, layer: int, head: int, n_heads: int):
  prefix = f"blocks/{layer}/attn/"

  def leaf(path, p):
    path = masks.leaf_path(path)
    name = path[len(prefix):] if path.startswith(prefix) else None
    if name not in HEAD_LEAVES:
      return np.bool_(False)
    one_hot = np.arange(n_heads) == head
    return one_hot.reshape((n_heads,) + (1,) * (np.ndim(p) - 1))

  return jax.tree_util.tree_map_with_path(leaf, params)


def component_mask(spec: str, params, config: ModelConfig):
  """Mask pytree (None for "full") for one spec; clear error for an unknown or out-of-range spec."""
  spec = spec.strip()
  if spec == "full":
    return None
  if spec.startswith("re:"):
    try:
      return masks.regex_mask(params, spec[3:])
    except ValueError as e:
      raise ValueError(f"component {spec!r}: {e}") from None
  if spec in _WHOLE:
    return masks.regex_mask(params, _WHOLE[spec])
  if m := _HEAD.fullmatch(spec):
    layer, head = int(m[1]), int(m[2])
    _check_layer(spec, layer, config)
    if not 0 <= head < config.n_heads:
      raise ValueError(f"component {spec!r}: head {head} does not exist (layers have {config.n_heads} heads)")
    return _head_mask(params, layer, head, config.n_heads)
  if m := _LAYER_PART.fullmatch(spec):
    layer = int(m[1])
    _check_layer(spec, layer, config)
    if m[2] == "ln1" and not config.layer_norm:
      raise ValueError(f"component {spec!r}: the model has no LayerNorm (layer_norm=False)")
    return masks.regex_mask(params, rf"blocks/{layer}/{m[2]}/.*")
  raise ValueError(f"unknown component spec {spec!r}; expected {SPEC_HELP}")


def component_masks(specs, params, config: ModelConfig) -> dict:
  """{spec: mask} for a list of specs, validated (each must free at least one parameter)."""
  specs = list(specs)
  if len(set(specs)) != len(specs):
    raise ValueError(f"duplicate component specs in {specs}")
  out = {spec: component_mask(spec, params, config) for spec in specs}
  for spec, mask in out.items():
    masks.normalize_mask(spec, mask, params)
  return out


def describe(spec: str, params, config: ModelConfig) -> str:
  """Human-readable preview of what a spec frees: one line per touched leaf, then the total."""
  mask = component_mask(spec, params, config)
  mask = masks.full_mask(params) if mask is None else mask
  rows = masks.preview(mask, params)
  total = sum(r[2] for r in rows)
  lines = [f"{spec}: {total:,} of {sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params)):,} parameters free"]
  lines += [f"  {path:28s} {str(shape):18s} {free:>10,} / {size:,}" for path, shape, free, size in rows]
  return "\n".join(lines)
