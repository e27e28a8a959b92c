"""TransformerLens state dicts <-> our params, for attention-only `HookedTransformer`s.

The paper's models (the 2-layer attention-only "tetrahedron-3m" run and its seeds) are TransformerLens
checkpoints. Their weights already carry an explicit head axis, so the mapping is one-to-one, names only:

  embed.W_E [V, D]             <-> embed/W_E              pos_embed.W_pos [n_ctx, D] <-> pos_embed/W_pos
  blocks.{l}.ln1.{w,b} [D]     <-> blocks/{l}/ln1/{scale,bias}
  blocks.{l}.attn.W_{Q,K,V} [H, D, Dh], b_{Q,K,V} [H, Dh], W_O [H, Dh, D], b_O [D] <-> blocks/{l}/attn/...
  ln_final.{w,b} [D]           <-> ln_final/{scale,bias}  unembed.W_U [D, V], b_U [V] <-> unembed/...

What a state dict cannot say, the config must: whether positions are "shortformer" (TransformerLens adds
W_pos to the query/key input after ln1, as our model does) or "standard", and whether a state dict
without LayerNorm weights had no normalisation or TransformerLens' weightless "LNPre". Inferred configs
take the paper's choices (shortformer; LayerNorm exactly when ln weights are present).

numpy only at import time: torch is needed just to read `.pth` files (safetensors files need neither).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from suscept_jax.models.config import ModelConfig

# Buffers TransformerLens keeps in its state dicts (causal mask, masking constant, rotary tables): no weights.
_BUFFER_SUFFIXES = (".attn.mask", ".attn.IGNORE")
_ATTN_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_LN_NAMES = {"w": "scale", "b": "bias"}
_TL_NORMALIZATION = {"LN": True, "LNPre": True, None: False, "None": False, "none": False}
_INTEROP_EXTRA = "pip install 'suscept_jax[interop]'"


def _as_numpy(name: str, value) -> np.ndarray:
  """A float32 numpy copy of a numpy array or torch tensor (bf16/fp16 checkpoints included)."""
  if hasattr(value, "detach"):  # a torch tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"state dict key {name!r} holds {arr.dtype} values; expected floating-point weights")
  return arr.astype(np.float32)


def _mlp_or_unknown(key: str) -> str:
  if re.match(r"blocks\.\d+\.(mlp\.|ln2\.)", key):
    return (f"state dict key {key!r} belongs to an MLP layer: only attention-only models (attn_only=True) can be "
            "imported")
  if "rotary" in key or key.endswith(("_W_K", "_W_V", "_b_K", "_b_V")):
    return f"state dict key {key!r}: rotary positions and grouped-query attention are not supported"
  return (f"unknown state dict key {key!r}: expected an attention-only HookedTransformer "
          "(embed, pos_embed, blocks.<l>.{ln1,attn}, ln_final, unembed)")


def _weights(state_dict: Mapping) -> dict[str, np.ndarray]:
  """The weight entries as float32 numpy, buffers dropped; unknown keys are an error naming the key."""
  if not isinstance(state_dict, Mapping):
    raise TypeError(f"expected a state dict (a mapping of key -> tensor), got {type(state_dict).__name__}")
  weights = {}
  expected = re.compile(r"(embed\.W_E|pos_embed\.W_pos|unembed\.(W_U|b_U)|ln_final\.[wb]|"
                        r"blocks\.\d+\.(ln1\.[wb]|attn\.(W_[QKVO]|b_[QKVO])))$")
  for key, value in state_dict.items():
    if key.endswith(_BUFFER_SUFFIXES):
      continue
    if not expected.match(key):
      raise ValueError(_mlp_or_unknown(key))
    weights[key] = _as_numpy(key, value)
  for key in ("embed.W_E", "pos_embed.W_pos", "unembed.W_U", "blocks.0.attn.W_Q"):
    if key not in weights:
      raise ValueError(f"state dict has no {key!r}: not a TransformerLens HookedTransformer state dict")
  return weights


# TransformerLens settings that change what the model computes, which ours computes one way only: a config
# giving another value is refused, naming it (dropping it would give other numbers without a word).
_TL_AS_OURS = {
    "use_attn_scale": lambda v: v is True, "attention_dir": lambda v: v == "causal",
    "scale_attn_by_inverse_layer_idx": lambda v: not v, "use_local_attn": lambda v: not v,
    "use_qk_norm": lambda v: not v, "clip_qkv": lambda v: v is None, "use_logn_attn": lambda v: not v,
    "final_rms": lambda v: not v, "post_embedding_ln": lambda v: not v,
    "use_normalization_before_and_after": lambda v: not v, "parallel_attn_mlp": lambda v: not v,
    "attn_scores_soft_cap": lambda v: v is None or v <= 0, "output_logits_soft_cap": lambda v: v is None or v <= 0,
    "num_experts": lambda v: not v, "relative_attention_num_buckets": lambda v: not v,
}


def _check_computes_as_ours(mapping: Mapping, d_head: int) -> None:
  """Refuse TransformerLens settings our model does not compute (see `_TL_AS_OURS`)."""
  for key, as_ours in _TL_AS_OURS.items():
    if key in mapping and not as_ours(mapping[key]):
      raise ValueError(f"config: {key}={mapping[key]!r} is not supported: our model computes attention-only "
                       f"transformers with TransformerLens' defaults there")
  scale = mapping.get("attn_scale", -1.0)
  if scale not in (None, -1.0) and not np.isclose(float(scale), np.sqrt(d_head)):
    raise ValueError(f"config: attn_scale={scale!r} is not supported: our model divides attention scores by "
                     f"√d_head = {np.sqrt(d_head):.4g}")


def _config_from_mapping(mapping: Mapping) -> dict:
  """Our ModelConfig fields from a TransformerLens config dict (or from our own field names)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  out = {k: v for k, v in mapping.items() if k in fields}
  if mapping.get("attn_only") is False:
    raise ValueError("config: attn_only=False; only attention-only models can be imported")
  if "normalization_type" in mapping:
    norm = mapping["normalization_type"]
    if norm not in _TL_NORMALIZATION:
      raise ValueError(f"config: normalization_type={norm!r} is not supported (LN, LNPre or None)")
    out["layer_norm"] = _TL_NORMALIZATION[norm]
  if "positional_embedding_type" in mapping:
    out["positional_embedding"] = mapping["positional_embedding_type"]
  if "eps" in mapping:
    out["ln_eps"] = float(mapping["eps"])
  return out


def infer_config(state_dict: Mapping, config: ModelConfig | Mapping | None = None) -> ModelConfig:
  """The ModelConfig of a state dict: shapes from the weights, the rest from `config` or the paper's choices.

  `config` may be a ModelConfig (checked against the weights), or a mapping of overrides in our field
  names or TransformerLens' (`positional_embedding_type`, `normalization_type`, `eps`, …), e.g. a
  checkpoint's saved `cfg.to_dict()`.
  """
  weights = _weights(state_dict)
  d_vocab, d_model = weights["embed.W_E"].shape
  n_heads, _, d_head = weights["blocks.0.attn.W_Q"].shape
  layers = sorted({int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))})
  inferred = dict(n_layers=layers[-1] + 1, d_model=d_model, n_heads=n_heads, d_head=d_head,
                  n_ctx=weights["pos_embed.W_pos"].shape[0], d_vocab=d_vocab,
                  layer_norm=any(re.match(r"(ln_final|blocks\.\d+\.ln1)\.", k) for k in weights),
                  positional_embedding="shortformer")
  if isinstance(config, ModelConfig):
    given = dataclasses.asdict(config)
    for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
      if given[name] != inferred[name]:
        raise ValueError(f"config.{name}={given[name]} but the state dict's weights have {name}={inferred[name]}")
    return config
  _check_computes_as_ours(config or {}, d_head)
  overrides = _config_from_mapping(config or {})
  for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
    if name in overrides and overrides[name] != inferred[name]:
      raise ValueError(f"config {name}={overrides[name]} but the state dict's weights have {name}={inferred[name]}")
  return ModelConfig(**{**inferred, **overrides})


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  h, d, k, v = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab
  shapes = {"embed.W_E": (v, d), "pos_embed.W_pos": (cfg.n_ctx, d), "unembed.W_U": (d, v), "unembed.b_U": (v,)}
  for layer in range(cfg.n_layers):
    attn = f"blocks.{layer}.attn."
    shapes.update({attn + "W_Q": (h, d, k), attn + "W_K": (h, d, k), attn + "W_V": (h, d, k), attn + "W_O": (h, k, d),
                   attn + "b_Q": (h, k), attn + "b_K": (h, k), attn + "b_V": (h, k), attn + "b_O": (d,)})
  return shapes


def _ln_keys(cfg: ModelConfig) -> list[str]:
  prefixes = [f"blocks.{layer}.ln1" for layer in range(cfg.n_layers)] + ["ln_final"]
  return [f"{p}.{s}" for p in prefixes for s in _LN_NAMES]


def from_transformer_lens(state_dict: Mapping, config: ModelConfig | Mapping | None = None
                          ) -> tuple[dict, ModelConfig]:
  """(params, model_config) from an attention-only HookedTransformer state dict (numpy arrays or torch tensors).

  A model config with layer_norm=True and a state dict without ln weights (TransformerLens' "LNPre")
  gets unit scales and zero biases, which is what LNPre computes.
  """
  weights = _weights(state_dict)
  cfg = infer_config(weights, config)
  expected = _expected_shapes(cfg)
  ln_keys = _ln_keys(cfg)
  has_ln = [k for k in ln_keys if k in weights]
  if cfg.layer_norm:
    if has_ln and len(has_ln) != len(ln_keys):
      missing = sorted(set(ln_keys) - set(has_ln))
      rms = all(k.endswith(".b") for k in missing)  # (RMSNorm: scales without biases)
      raise ValueError(f"state dict has some LayerNorm weights but not {missing[:4]}"
                       + ("; scales without biases look like RMSNorm, which is not supported" if rms else ""))
    for key in ln_keys:
      expected[key] = (cfg.d_model,)
      if not has_ln:
        weights[key] = np.ones(cfg.d_model, np.float32) if key.endswith(".w") else np.zeros(cfg.d_model, np.float32)
  elif has_ln:
    raise ValueError(f"state dict has LayerNorm weights ({has_ln[0]!r}, …) but the config says layer_norm=False")
  if "unembed.b_U" not in weights:  # TransformerLens always has it; other exporters may drop a zero bias
    weights["unembed.b_U"] = np.zeros(cfg.d_vocab, np.float32)
  for key, shape in expected.items():
    if key not in weights:
      raise ValueError(f"state dict has no {key!r} (expected shape {shape} for {cfg.n_layers} layers)")
    if weights[key].shape != shape:
      raise ValueError(f"state dict key {key!r} has shape {weights[key].shape}, expected {shape} "
                       f"(d_model={cfg.d_model}, n_heads={cfg.n_heads}, d_head={cfg.d_head}, d_vocab={cfg.d_vocab})")
  extra = sorted(set(weights) - set(expected))
  if extra:
    raise ValueError(f"state dict key {extra[0]!r} does not fit a {cfg.n_layers}-layer model")
  params = {"embed": {"W_E": weights["embed.W_E"]}, "pos_embed": {"W_pos": weights["pos_embed.W_pos"]},
            "unembed": {"W_U": weights["unembed.W_U"], "b_U": weights["unembed.b_U"]}, "blocks": {}}
  for layer in range(cfg.n_layers):
    block = {"attn": {name: weights[f"blocks.{layer}.attn.{name}"] for name in _ATTN_WEIGHTS}}
    if cfg.layer_norm:
      block["ln1"] = {ours: weights[f"blocks.{layer}.ln1.{tl}"] for tl, ours in _LN_NAMES.items()}
    params["blocks"][str(layer)] = block
  if cfg.layer_norm:
    params["ln_final"] = {ours: weights[f"ln_final.{tl}"] for tl, ours in _LN_NAMES.items()}
  return params, cfg


def to_transformer_lens(params: Mapping, model_config: ModelConfig) -> dict[str, np.ndarray]:
  """A TransformerLens state dict (numpy float32 arrays, TL key names) of our params; its buffers are left out
  (load it with `model.load_state_dict(..., strict=False)` or convert the arrays with torch.from_numpy)."""
  cfg = model_config
  get = lambda *path: np.asarray(_lookup(params, path), np.float32)  # noqa: E731
  out = {"embed.W_E": get("embed", "W_E"), "pos_embed.W_pos": get("pos_embed", "W_pos")}
  for layer in range(cfg.n_layers):
    if cfg.layer_norm:
      out.update({f"blocks.{layer}.ln1.{tl}": get("blocks", str(layer), "ln1", ours) for tl, ours in _LN_NAMES.items()})
    out.update({f"blocks.{layer}.attn.{name}": get("blocks", str(layer), "attn", name) for name in _ATTN_WEIGHTS})
  if cfg.layer_norm:
    out.update({f"ln_final.{tl}": get("ln_final", ours) for tl, ours in _LN_NAMES.items()})
  out.update({"unembed.W_U": get("unembed", "W_U"), "unembed.b_U": get("unembed", "b_U")})
  for key, shape in _expected_shapes(cfg).items():
    if out[key].shape != shape:
      raise ValueError(f"params for {key!r} have shape {out[key].shape}, but model_config implies {shape}")
  return out


def _lookup(params, path):
  node = params
  for i, part in enumerate(path):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(f"params have no {'/'.join(path[:i + 1])!r}: not this project's transformer params")
    node = node[part]
  return node


def transformer_lens_config(model_config: ModelConfig) -> dict:
  """Keyword arguments of TransformerLens' HookedTransformerConfig for the same model."""
  cfg = model_config
  return dict(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, n_ctx=cfg.n_ctx,
              d_vocab=cfg.d_vocab, attn_only=True, act_fn=None, normalization_type="LN" if cfg.layer_norm else None,
              positional_embedding_type=cfg.positional_embedding, eps=cfg.ln_eps)


# ---- files -------------------------------------------------------------------------------------------------

def load_state_dict(path) -> dict:
  """A state dict from a `.pth`/`.pt` file (needs torch) or a `.safetensors` file (needs safetensors).

  A `.pth` holding a dict that wraps the state dict (under "state_dict" or "model") is unwrapped.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} not found")
  if path.suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise ImportError(f"reading {path} needs safetensors: {_INTEROP_EXTRA}") from None
    try:
      return load_file(str(path))
    except Exception as e:  # (safetensors' own error names no file)
      raise ValueError(f"{path} could not be read as a safetensors state dict: {e}") from None
  if path.suffix not in (".pth", ".pt", ".bin"):
    raise ValueError(f"{path}: expected a .pth, .pt, .bin or .safetensors checkpoint")
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {path} needs torch: {_INTEROP_EXTRA}") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle/zip errors of a damaged or foreign file
    raise ValueError(f"{path} could not be read as a torch state dict: {e}") from None
  if isinstance(loaded, Mapping) and "embed.W_E" not in loaded:
    for wrapper in ("state_dict", "model", "model_state_dict"):
      if isinstance(loaded.get(wrapper), Mapping):
        return dict(loaded[wrapper])
  if not isinstance(loaded, Mapping):
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
  return dict(loaded)


_STEP = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a file name


def checkpoint_files(path) -> dict[int, Path]:
  """{step: file} for a checkpoint file or a directory of them, steps read from the names
  (`checkpoint_0049900.pth` -> 49900). A file without a step number in its name is an error naming it."""
  path = Path(path)
  if path.is_file():
    files = [path]
  elif path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    if not files:
      raise FileNotFoundError(f"{path} holds no .pth, .pt or .safetensors checkpoints")
  else:
    raise FileNotFoundError(f"{path} not found")
  steps: dict[int, Path] = {}
  for file in files:
    match = _STEP.search(file.stem)
    if not match:
      raise ValueError(f"{file}: no step number in the file name (expected e.g. checkpoint_0049900{file.suffix})")
    step = int(match.group(1))
    if step in steps:
      raise ValueError(f"{file} and {steps[step]} both claim step {step}")
    steps[step] = file
  return dict(sorted(steps.items()))
