"""Does the paper preset fit a TPU v4 chip and an H100? Micro-batch auto-sizing against their memory, by XLA's
memory analysis of the compiled draw programs (compiled here on emulated CPU devices, not run).

  python -m benchmarks.paper_memory [--model=tetrahedron_3m] [--probes=13] [--batch_size=64]
                                    [--per_token_batch_size=16] [--per_token_contexts=160]

For each machine: the mesh (4 chips for a v4-8, 1 GPU), the memory a JAX process gets on one device, and per
component group (the restricted-gradient programs) the micro-batch that auto-sizing picks and the GiB it needs,
for the sweep and for the per-token run (paper: batch 16, one dataset's 160 contexts observed per unit), each
beside what the whole batch would need. XLA's buffer assignment on CPU approximates the accelerator's; confirm
on the device when one is lent.
"""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # (before jax is imported)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import suscept_jax as sj  # noqa: E402
from suscept_jax import programs, sampler  # noqa: E402
from suscept_jax.models import components, config as model_config, transformer  # noqa: E402

GiB = 2**30
# (devices in the mesh, bytes one JAX process may allocate on one device): a TPU v4 chip has 32 GiB of HBM of
# which the runtime reserves a little; JAX preallocates 75 % of an "80 GB" H100 by default, whose memory is
# 81,559 MiB (nvidia-smi's total; 80e9 bytes would understate it by 7 %).
MACHINES = {"TPU v4-8 (4 chips × 32 GiB)": (4, 31 * GiB),
            "H100 80 GB (JAX's default 75 %)": (1, int(0.75 * 81_559 * 2**20))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--model", default="tetrahedron_3m")
  parser.add_argument("--probes", type=int, default=13)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_chains", type=int, default=4)
  parser.add_argument("--per_token_batch_size", type=int, default=16)
  parser.add_argument("--per_token_contexts", type=int, default=160, help="observed contexts per unit of work")
  parser.add_argument("--scale_memory", type=float, default=1.0, help="multiply the machines' memory (tests)")
  args = parser.parse_args(argv)
  cfg = model_config.get_config(args.model)
  params = transformer.init_params(cfg)
  names, masks_C = sj.stack_masks(components.component_masks(components.default_components(cfg), params, cfg), params)
  contexts = np.zeros((4 * args.batch_size, cfg.n_ctx + 1), np.int32)
  probes = {f"probe{i}": contexts for i in range(args.probes)}
  # Logits whole, as the accelerators compute them ("auto" chunks them on CPU, where this compiles).
  loss_fn = functools.partial(transformer.context_nll, config=cfg, logits_chunk=None)
  runs = {  # what each run compiles: (batch size, probes, per-token observation)
      f"sweep (batch {args.batch_size}, {args.probes} probes)": dict(batch_size=args.batch_size, probes=probes,
                                                                    delta_h=0.1),
      f"per-token run (batch {args.per_token_batch_size}, {args.per_token_contexts} contexts observed)": dict(
          batch_size=args.per_token_batch_size, probes={}, delta_h=None,
          observed=np.zeros((args.per_token_contexts, cfg.n_ctx + 1), np.int32),
          token_loss_fn=functools.partial(transformer.per_token_nll, config=cfg, logits_chunk=None))}
  config = sj.SGLDConfig(num_chains=args.num_chains)
  print(f"{args.model}: {transformer.param_count(params):,} params, ctx {cfg.n_ctx}; {len(names)} components × "
        f"{args.num_chains} chains")
  for machine, (num_devices, device_bytes) in MACHINES.items():
    device_bytes = int(device_bytes * args.scale_memory)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("entries",))
    print(f"{machine}: limit {programs.MEMORY_FRACTION:.0%} of {device_bytes / GiB:.1f} GiB per device")
    for run, options in runs.items():
      plan = functools.partial(sampler.memory_plan, loss_fn, params, names, masks_C, contexts, config=config,
                               mesh=mesh, device_bytes=device_bytes, **options)
      print(f"  {run}:")
      for program in plan(microbatch_size="auto"):
        alike = len(program.components) - 1
        kind = program.components[0] + (f" and {alike} alike" if alike else "")
        searched = ", ".join(f"{rows}" if need is not None else f"({rows} skipped)"
                             for rows, need, _ in program.searched)
        print(f"    {kind}: {program.entries_per_device} entries per device, micro-batch "
              f"{program.microbatch_size or options['batch_size']}: {program.bytes_per_device / GiB:.2f} GiB "
              f"(whole batch: {program.searched[0][1] / GiB:.2f} GiB; compiled at {searched})")


if __name__ == "__main__":
  main()
