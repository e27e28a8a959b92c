"""Model configurations: the attention-only transformer of the paper and small variants."""
import dataclasses

POSITIONAL_EMBEDDINGS = ("shortformer", "standard")
HEAD_LEAVES = ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O")  # an attention layer's leaves with a head axis


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of an attention-only transformer (hashable: used as a jit static argument)."""

  n_layers: int = 2  # attention blocks, no MLPs
  d_model: int = 256  # residual stream width
  n_heads: int = 8  # heads per layer
  d_head: int = 32  # width of each head's Q/K/V
  n_ctx: int = 1024  # longest input the model takes (positions)
  d_vocab: int = 5000  # token vocabulary size
  layer_norm: bool = True  # LayerNorm before each block and before the unembedding
  positional_embedding: str = "shortformer"  # "shortformer": added to Q/K inputs only; "standard": to the residual
  init_std: float = 0.02  # std of the normal initialisation of weight matrices (biases start at zero)
  ln_eps: float = 1e-5  # LayerNorm epsilon (TransformerLens' default)

  def __post_init__(self):
    if self.positional_embedding not in POSITIONAL_EMBEDDINGS:
      raise ValueError(f"positional_embedding={self.positional_embedding!r}: expected one of {POSITIONAL_EMBEDDINGS}")
    for name in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx", "d_vocab"):
      if getattr(self, name) < 1:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")

  @property
  def head_names(self) -> list[str]:
    """Stable component names of every attention head: 'l0h0', 'l0h1', ..."""
    return [f"l{layer}h{head}" for layer in range(self.n_layers) for head in range(self.n_heads)]


ATTENTION_IMPLEMENTATIONS = ("plain", "fused", "flash")
PRECISIONS = ("float32", "default", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Numerics:
  """How the forward pass computes (not what the model is): a setting of a run, recorded with its results.

  attention: "plain" (explicit softmax(QKᵀ)V, the reference; from `transformer.BLOCKED_ATTENTION_FROM`
    positions on, and unless the patterns are asked for, query block by query block, skipping the scores above
    the causal diagonal), "fused" (`jax.nn.dot_product_attention`:
    cuDNN's flash attention on an NVIDIA GPU in bfloat16, which never materialises the [T, T] pattern in
    HBM; XLA's fused composition at the float32 precisions and on other backends: `transformer.fused_kernel`) or
    "flash" (the Pallas flash-attention kernel for TPU, tiles of 128 positions, contexts padded up to whole
    tiles; TPU only).
  precision: "float32" (float32 activations, matmuls at HIGHEST precision: exact float32 everywhere),
    "default" (float32 activations, the accelerator's default matmul precision: TF32 on recent NVIDIA
    GPUs, bf16 passes on TPU, float32 on CPU), "bfloat16" (matmul inputs rounded to bfloat16 with float32
    accumulation; params, residual stream, LayerNorm, softmax, losses and φ stay float32).
  """

  attention: str = "plain"
  precision: str = "float32"

  def __post_init__(self):
    if self.attention not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"attention={self.attention!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS}")


CONFIGS = {
    # The paper's model (Hoogland et al. 2025; Baker et al. App. C): 3.36M parameters.
    "tetrahedron_3m": ModelConfig(),
    # Small enough to train and sample on a 2-core CPU (the demo preset: 3000 steps in a few minutes). Trained
    # on contexts of which 75 % carry a repeated span, a previous-token head and an induction head form
    # between steps 1300 and 1600 (presets.py; "Demo model and head differentiation" in BUILD_NOTES.md).
    "demo": ModelConfig(n_layers=2, d_model=48, n_heads=4, d_head=12, n_ctx=32, d_vocab=512),
    # For unit tests only: compiles in seconds.
    "tiny": ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=16, d_vocab=64),
}


def get_config(name: str, **overrides) -> ModelConfig:
  """A named config, optionally with fields replaced (e.g. d_vocab to match a tokenizer)."""
  if name not in CONFIGS:
    raise ValueError(f"Unknown model config {name!r}; known: {sorted(CONFIGS)}")
  return dataclasses.replace(CONFIGS[name], **overrides)
