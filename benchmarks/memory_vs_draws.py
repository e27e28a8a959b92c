"""Peak memory does not grow with the number of draws: run the sampler at 50 and at 500 draws in fresh
processes and compare peak RSS (host = device memory on CPU; on an accelerator the device's
peak_bytes_in_use is printed too).

  python -m benchmarks.memory_vs_draws [--model=demo] [--components=full,l0h0] [--draws=50,500]
"""
import argparse

from benchmarks import common

CHILD = r"""
import sys
import suscept_jax as sj
from benchmarks import common
draws, model, components = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg, loss_fn, params, masks, base, probes = common.setup(model, components=components)
res = sj.estimate_susceptibilities(loss_fn, params, masks, base, probes, config=sj.SGLDConfig(num_draws=draws),
                                   batch_size=20, delta_h=0.1, progress=False)
common.print_peak_memory(draws, res.seconds)
"""


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__)
  common.add_size_flags(parser)
  parser.add_argument("--draws", type=common.draw_counts, default=(50, 500), help="the two run lengths")
  args = parser.parse_args(argv)
  return common.memory_growth(lambda draws: common.child_measurement(CHILD, draws, args.model, args.components),
                              args.draws)


if __name__ == "__main__":
  main()
