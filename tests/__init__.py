"""The test suite. XLA_TEST_FLAGS: what every test process runs with, this one (conftest.py) and the runners'
subprocesses (helpers.env), so that numbers compared across processes come from the same compiler settings."""
from importlib import metadata

# 4 emulated CPU devices (sharding is tested on one host). XLA:CPU's older loop emitters instead of its fusion
# emitters: the suite compiles ≈ 110 distinct sampler programs of tiny models, where compilation is most of
# the time; these compile ≈ 40 % faster and run ≈ 25 % slower (BUILD_NOTES, "Twelfth session"). The runners,
# benchmarks and one test's child process (test_restricted_gradients: groups side by side) keep
# XLA's defaults. jaxlib 0.11 has no loop emitters: XLA aborts on the flag there.
_JAXLIB = tuple(int(part) for part in metadata.version("jaxlib").split(".")[:2])
XLA_TEST_FLAGS = ("--xla_force_host_platform_device_count=4",) + (
    ("--xla_cpu_use_fusion_emitters=false",) if _JAXLIB < (0, 11) else ())
