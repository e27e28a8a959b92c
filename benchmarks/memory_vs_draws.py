"""Peak memory does not grow with the number of draws: run the sampler at 50 and at 500 draws in fresh
processes and compare peak RSS (host = device memory on CPU; on an accelerator the device's
peak_bytes_in_use is printed too).

  python -m benchmarks.memory_vs_draws
"""
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import jax
import suscept_jax as sj
from benchmarks import common
draws = int(sys.argv[1])
cfg, loss_fn, params, masks, base, probes = common.setup("demo")
res = sj.estimate_susceptibilities(loss_fn, params, masks, base, probes, config=sj.SGLDConfig(num_draws=draws),
                                   batch_size=20, delta_h=0.1, progress=False)
stats = jax.devices()[0].memory_stats() or {}
print(json.dumps({"draws": draws, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20, "seconds": res.seconds}))
"""


def measure(draws: int) -> dict:
  out = subprocess.run([sys.executable, "-c", CHILD, str(draws)], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  small, large = measure(50), measure(500)
  for r in (small, large):
    print(f"  {r['draws']:4d} draws: peak RSS {r['peak_rss_mb']:.0f} MB, device peak {r['device_peak_mb']:.0f} MB, "
          f"{r['seconds']:.0f} s")
  growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
  print(f"  peak memory growth from 50 to 500 draws: {100 * growth:+.1f}% (target: within 5%)")


if __name__ == "__main__":
  main()
