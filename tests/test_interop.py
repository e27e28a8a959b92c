"""TransformerLens import/export: exact round trips here, and against TransformerLens itself (the
`interop` extra: torch + transformer-lens<4) on random weights: the same per-token NLL."""
import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest

from suscept_jax.models import config as model_config
from suscept_jax.models import interop, transformer

TINY = model_config.get_config("tiny")


def _random_params(cfg, seed=0):
  """Params with every leaf random (biases and LayerNorm weights too), so no mapping error can hide."""
  rng = np.random.default_rng(seed)
  import jax
  return jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32),
                      transformer.param_shapes(cfg))


@pytest.mark.parametrize("layer_norm", [True, False])
def test_round_trip_is_exact(layer_norm):
  cfg = dataclasses.replace(TINY, layer_norm=layer_norm, positional_embedding="standard")
  params = _random_params(cfg)
  state_dict = interop.to_transformer_lens(params, cfg)
  assert "blocks.1.attn.W_O" in state_dict and ("ln_final.w" in state_dict) == layer_norm
  back, back_cfg = interop.from_transformer_lens(state_dict, config={"positional_embedding_type": "standard"})
  assert back_cfg == cfg
  import jax
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_inferred_config_takes_the_papers_choices():
  cfg = interop.infer_config(interop.to_transformer_lens(_random_params(TINY), TINY))
  assert cfg == TINY  # shortformer, LayerNorm because ln weights are present


def test_bad_state_dicts_are_named():
  sd = interop.to_transformer_lens(_random_params(TINY), TINY)
  with pytest.raises(ValueError, match=r"'blocks.0.mlp.W_in'.*MLP"):
    interop.from_transformer_lens({**sd, "blocks.0.mlp.W_in": np.zeros((16, 64), np.float32)})
  with pytest.raises(ValueError, match=r"unknown state dict key 'decoder.weight'"):
    interop.from_transformer_lens({**sd, "decoder.weight": np.zeros(3, np.float32)})
  bad = dict(sd, **{"blocks.1.attn.W_K": np.zeros((2, 16, 4), np.float32)})
  with pytest.raises(ValueError, match=r"'blocks.1.attn.W_K' has shape \(2, 16, 4\), expected \(2, 16, 8\)"):
    interop.from_transformer_lens(bad)
  missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.b_V"}
  with pytest.raises(ValueError, match=r"no 'blocks.1.attn.b_V'"):
    interop.from_transformer_lens(missing)
  with pytest.raises(ValueError, match=r"config.d_vocab=100 but the state dict's weights have d_vocab=64"):
    interop.from_transformer_lens(sd, dataclasses.replace(TINY, d_vocab=100))
  with pytest.raises(ValueError, match="LayerNorm weights .* layer_norm=False"):
    interop.from_transformer_lens(sd, {"normalization_type": None})
  with pytest.raises(ValueError, match="normalization_type='RMS'"):
    interop.from_transformer_lens(sd, {"normalization_type": "RMS"})
  no_final = {k: v for k, v in sd.items() if not k.startswith("ln_final.")}  # (it blamed layer_norm=False)
  with pytest.raises(ValueError, match=r"has some LayerNorm weights but not \['ln_final.b', 'ln_final.w'\]$"):
    interop.from_transformer_lens(no_final)
  rms = {k: v for k, v in sd.items() if not k.endswith("ln1.b") and k != "ln_final.b"}
  with pytest.raises(ValueError, match=r"scales without biases look like RMSNorm, which is not supported"):
    interop.from_transformer_lens(rms)


@pytest.mark.parametrize("setting", [{"use_attn_scale": False}, {"attn_scale": 2.0}, {"attention_dir": "bidirectional"},
                                     {"scale_attn_by_inverse_layer_idx": True}, {"attn_scores_soft_cap": 2.0},
                                     {"output_logits_soft_cap": 1.0}, {"use_local_attn": True}, {"final_rms": True}])
def test_transformer_lens_settings_we_do_not_compute_are_refused(setting):
  """A TransformerLens config with a setting that changes the numbers, which our model computes one way only,
  was accepted and the setting dropped: per-token NLL off by 0.5–2.4 nats from TransformerLens'."""
  sd = interop.to_transformer_lens(_random_params(TINY), TINY)
  [(key, value)] = setting.items()
  with pytest.raises(ValueError, match=rf"config: {key}={value!r} is not supported"):
    interop.from_transformer_lens(sd, {"attn_only": True, **setting})
  defaults = {"use_attn_scale": True, "attn_scale": float(np.sqrt(TINY.d_head)), "attention_dir": "causal",
              "attn_scores_soft_cap": -1.0, "final_rms": False}  # (what a saved cfg.to_dict() holds)
  assert interop.from_transformer_lens(sd, defaults)[1] == TINY


def test_checkpoint_files_need_step_numbers(tmp_path):
  for step in (0, 100, 49900):
    (tmp_path / f"checkpoint_{step:07d}.safetensors").write_bytes(b"")
  assert list(interop.checkpoint_files(tmp_path)) == [0, 100, 49900]
  (tmp_path / "final.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=r"final.safetensors: no step number"):
    interop.checkpoint_files(tmp_path)
  with pytest.raises(FileNotFoundError, match="nothing_here not found"):
    interop.checkpoint_files(tmp_path / "nothing_here")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no .pth"):
    interop.checkpoint_files(tmp_path / "empty")


def test_safetensors_file_round_trip(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors comes with the interop extra: "
                                          "pip install -e '.[interop]'")
  sd = interop.to_transformer_lens(_random_params(TINY), TINY)
  safetensors_numpy.save_file(sd, str(tmp_path / "checkpoint_100.safetensors"))
  loaded = interop.load_state_dict(tmp_path / "checkpoint_100.safetensors")
  assert sorted(loaded) == sorted(sd)
  np.testing.assert_array_equal(loaded["unembed.W_U"], sd["unembed.W_U"])
  (tmp_path / "checkpoint_200.safetensors").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"checkpoint_200.safetensors could not be read as a safetensors state dict"):
    interop.load_state_dict(tmp_path / "checkpoint_200.safetensors")


# ---- against TransformerLens ---------------------------------------------------------------------------------

def _transformer_lens():
  pytest.importorskip("torch", reason="the TransformerLens checks need the interop extra: pip install -e '.[interop]'")
  return pytest.importorskip("transformer_lens", reason="the TransformerLens checks need the interop extra "
                             "(transformer-lens<4): pip install -e '.[interop]'")


def _hooked_transformer(tl, cfg_kwargs, **more):
  with warnings.catch_warnings():  # TransformerLens 3.x deprecates HookedTransformer in favour of its 4.x bridge
    warnings.simplefilter("ignore", DeprecationWarning)
    return tl.HookedTransformer(tl.HookedTransformerConfig(**cfg_kwargs, device="cpu", **more))


def _tl_model(tl, cfg_kwargs, seed):
  import torch
  torch.manual_seed(seed)
  model = _hooked_transformer(tl, cfg_kwargs, seed=seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(0.3 * torch.randn_like(p) + (1.0 if name.endswith("ln1.w") or name.endswith("ln_final.w") else 0.0))
  return model.eval()


def _tl_nll(model, tokens):
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens, np.int64)), return_type="loss", loss_per_token=True).numpy()


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
@pytest.mark.parametrize("normalization", ["LN", None, "LNPre"])
def test_import_matches_transformer_lens(positional, normalization):
  tl = _transformer_lens()
  kwargs = dict(n_layers=2, d_model=16, n_ctx=16, d_head=8, n_heads=2, d_vocab=64, attn_only=True, act_fn=None,
                normalization_type=normalization, positional_embedding_type=positional)
  model = _tl_model(tl, kwargs, seed=1)
  given = model.cfg.to_dict()  # (a checkpoint's saved config, every TransformerLens setting in it)
  params, cfg = interop.from_transformer_lens(model.state_dict(), config=given)
  assert cfg.layer_norm == (normalization is not None) and cfg.positional_embedding == positional
  tokens = np.random.default_rng(0).integers(0, 64, size=(3, 16))
  ours = np.asarray(transformer.per_token_nll(params, tokens, cfg))
  np.testing.assert_allclose(ours, _tl_nll(model, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("positional", ["shortformer", "standard"])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_export_matches_transformer_lens(positional, layer_norm):
  tl = _transformer_lens()
  import torch
  cfg = dataclasses.replace(TINY, positional_embedding=positional, layer_norm=layer_norm)
  params = _random_params(cfg, seed=2)
  model = _hooked_transformer(tl, interop.transformer_lens_config(cfg))
  state_dict = {k: torch.from_numpy(v) for k, v in interop.to_transformer_lens(params, cfg).items()}
  result = model.load_state_dict(state_dict, strict=False)
  assert not result.unexpected_keys
  assert all(k.endswith(("attn.mask", "attn.IGNORE")) for k in result.missing_keys), result.missing_keys
  tokens = np.random.default_rng(1).integers(0, 64, size=(3, 16))
  np.testing.assert_allclose(np.asarray(transformer.per_token_nll(params, tokens, cfg)),
                             _tl_nll(model.eval(), tokens), atol=1e-4, rtol=0)
  # and the torch tensors of a real TL model read back exactly
  back, _ = interop.from_transformer_lens(model.state_dict(), {"positional_embedding_type": positional,
                                                               "normalization_type": "LN" if layer_norm else None})
  np.testing.assert_array_equal(back["blocks"]["1"]["attn"]["W_O"], params["blocks"]["1"]["attn"]["W_O"])


def test_pth_file_and_wrapped_state_dict(tmp_path):
  _transformer_lens()
  import torch
  sd = {k: torch.from_numpy(v) for k, v in interop.to_transformer_lens(_random_params(TINY), TINY).items()}
  torch.save(sd, tmp_path / "checkpoint_0000100.pth")
  torch.save({"state_dict": sd, "step": 200}, tmp_path / "checkpoint_0000200.pth")
  for step in (100, 200):
    loaded = interop.load_state_dict(tmp_path / f"checkpoint_{step:07d}.pth")
    np.testing.assert_array_equal(loaded["embed.W_E"].numpy(), sd["embed.W_E"].numpy())
  (tmp_path / "checkpoint_0000300.pth").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match=r"checkpoint_0000300.pth could not be read"):
    interop.load_state_dict(tmp_path / "checkpoint_0000300.pth")


def test_convert_command_refuses_bad_input_naming_it(tmp_path, tiny):
  _transformer_lens()
  import torch
  from suscept_jax import checkpoints
  _, _, tok, _ = tiny
  cfg = dataclasses.replace(TINY, d_vocab=320)
  for step in (0, 50):
    sd = interop.to_transformer_lens(_random_params(cfg, seed=step), cfg)
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / f"checkpoint_{step:07d}.pth")
  run_dir = tmp_path / "run"
  assert checkpoints.import_transformer_lens(tmp_path, run_dir, tokenizer_path=tok, log=lambda *_: None) == [0, 50]
  assert checkpoints.available_steps(run_dir) == [0, 50] and checkpoints.read_model_config(run_dir) == cfg
  np.testing.assert_array_equal(checkpoints.load_params(run_dir, 50)["embed"]["W_E"], sd["embed.W_E"])
  assert checkpoints.import_transformer_lens(tmp_path, run_dir, log=print) == [0, 50]  # a rerun is a no-op
  assert "tokenizer_fingerprint" in checkpoints.read_run_info(run_dir)  # (kept by the rerun without --tokenizer)
  # A file whose content changed at a step already converted: refused (the rerun said "2 checkpoints" and kept
  # the old weights); a new step is converted as usual.
  first = (tmp_path / "checkpoint_0000050.pth").read_bytes()
  other = interop.to_transformer_lens(_random_params(cfg, seed=9), cfg)
  torch.save({k: torch.from_numpy(v) for k, v in other.items()}, tmp_path / "checkpoint_0000050.pth")
  with pytest.raises(ValueError, match=r"step 50 of .*run was converted from another content of "
                                       r".*checkpoint_0000050.pth \(sha256 [0-9a-f]{16} then, [0-9a-f]{16} now\)"):
    checkpoints.import_transformer_lens(tmp_path, run_dir, log=lambda *_: None)
  (tmp_path / "checkpoint_0000050.pth").write_bytes(first)
  shutil.copy(tmp_path / "checkpoint_0000000.pth", tmp_path / "checkpoint_0000055.pth")
  assert checkpoints.import_transformer_lens(tmp_path, run_dir, log=lambda *_: None) == [0, 50, 55]
  assert sorted(checkpoints.read_run_info(run_dir)["source_digests"], key=int) == ["0", "50", "55"]
  (tmp_path / "checkpoint_0000055.pth").unlink()
  # Same model, other origin: refused, not merged (it used to add the steps and rewrite run.json).
  (tmp_path / "more").mkdir()
  shutil.copy(tmp_path / "checkpoint_0000050.pth", tmp_path / "more" / "checkpoint_0000070.pth")
  with pytest.raises(ValueError, match=r"already holds a run converted from .*would mix two runs"):
    checkpoints.import_transformer_lens(tmp_path / "more", run_dir, log=lambda *_: None)
  trained = tmp_path / "trained"
  shutil.copytree(tiny[1], trained)
  with pytest.raises(ValueError, match=r"already holds a run trained here"):
    checkpoints.import_transformer_lens(tmp_path / "more", trained, log=lambda *_: None)
  # A checkpoint that does not match its run.json: named, with the step (not orbax's advice to load it anyway).
  info = checkpoints.read_run_info(run_dir)
  info["model_config"]["d_head"] = cfg.d_head // 2
  (run_dir / "run.json").write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"the checkpoint at step 50 in .* does not match the model its run.json"):
    checkpoints.load_params(run_dir, 50)
  other = dataclasses.replace(TINY, d_vocab=64)
  (tmp_path / "small").mkdir()
  torch.save({k: torch.from_numpy(v) for k, v in interop.to_transformer_lens(_random_params(other), other).items()},
             tmp_path / "small" / "checkpoint_7.pth")
  quiet = dict(log=lambda *_: None)
  with pytest.raises(ValueError, match=r"tokenizer .*tokenizer.json has a vocabulary of 320 tokens but the model "
                     r"has d_vocab=64"):
    checkpoints.import_transformer_lens(tmp_path / "small", tmp_path / "run_small", tokenizer_path=tok, **quiet)
  with pytest.raises(ValueError, match=r"run directory .*run already holds a run of another model"):
    checkpoints.import_transformer_lens(tmp_path / "small", run_dir, log=lambda *_: None)
  (tmp_path / "small" / "checkpoint_7.pth").rename(tmp_path / "small" / "final.pth")
  with pytest.raises(ValueError, match=r"final.pth: no step number"):
    checkpoints.import_transformer_lens(tmp_path / "small", tmp_path / "run_small", log=lambda *_: None)
  # A weight that is not finite: named with its file (it converted silently and stopped the sweep later, naming
  # neither the step nor the run); a checkpoint already saved with one is named with its step.
  (tmp_path / "nan").mkdir()
  bad = interop.to_transformer_lens(_random_params(cfg, seed=3), cfg)
  bad["embed.W_E"][1, 2] = np.nan
  torch.save({k: torch.from_numpy(v) for k, v in bad.items()}, tmp_path / "nan" / "checkpoint_9.pth")
  with pytest.raises(ValueError, match=r"checkpoint_9.pth: params leaf embed/W_E contains NaN or inf \(1 of"):
    checkpoints.import_transformer_lens(tmp_path / "nan", tmp_path / "run_nan", log=lambda *_: None)
  info["model_config"]["d_head"] = cfg.d_head  # (the run.json changed above, restored)
  (run_dir / "run.json").write_text(json.dumps(info))
  with checkpoints.params_manager(run_dir) as mngr:
    params, _ = interop.from_transformer_lens(bad, None)
    checkpoints.save_params(mngr, 60, params)
  with pytest.raises(ValueError, match=r"the checkpoint at step 60 in .*run: params leaf embed/W_E contains NaN"):
    checkpoints.load_params(run_dir, 60)
