"""The CPU runtime settings the `modulenet` command applies: they must take effect, and change
nothing but rounding. Each check runs in a fresh process, as the settings are process-wide.
(What they are worth in speed is a benchmark's business: `modulenet bench`.)"""

import json
import subprocess
import sys

import numpy as np
import pytest

from modulenet_jax import cpu_runtime

PROBE = r"""
import json, sys
from modulenet_jax import cpu_runtime
applied = sys.argv[1] == "tuned" and cpu_runtime.reuse_freed_memory() and cpu_runtime.prefer_eigen_convolutions()
import jax, jax.numpy as jnp
from jax import lax
conv = jax.jit(lambda x, w: jax.nn.relu(lax.conv_general_dilated(
    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
hlo = conv.lower(jnp.zeros((500, 8, 8, 64)), jnp.zeros((3, 3, 64, 64))).compile().as_text()
import numpy as np
x = np.random.default_rng(0).standard_normal((500, 8, 8, 64), np.float32)  # numpy: no random program to compile
w = 0.05 * np.random.default_rng(1).standard_normal((3, 3, 64, 64), np.float32)
print(json.dumps({"applied": applied, "ynn": "ynn_fusion" in hlo, "out": conv(x, w)[:4].ravel().tolist()}))
"""


def _probe(mode):
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_settings_take_effect_and_change_only_rounding():
    from jaxlib.version import __version__ as jaxlib_version

    if not jaxlib_version.startswith(cpu_runtime.MEASURED_JAXLIB):
        pytest.skip(f"the YNNPACK setting is only applied on jaxlib {cpu_runtime.MEASURED_JAXLIB}, not {jaxlib_version}")
    default, tuned = _probe("default"), _probe("tuned")
    assert tuned["applied"] and default["ynn"] and not tuned["ynn"]
    np.testing.assert_allclose(tuned["out"], default["out"], rtol=1e-5, atol=1e-5)


def test_an_explicit_ynn_setting_is_left_alone():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
    assert not cpu_runtime.prefer_eigen_convolutions(env, "0.10.2")
    assert env["XLA_FLAGS"].endswith("INDIVIDUAL_CONVOLUTION")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_runtime.prefer_eigen_convolutions(env, "0.10.2")
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type="


def test_an_unmeasured_jaxlib_gets_no_flag():
    """XLA aborts on an unknown flag, so a release the flag was not checked on is left alone."""
    env = {}
    assert not cpu_runtime.prefer_eigen_convolutions(env, "0.9.0")
    assert not cpu_runtime.prefer_eigen_convolutions(env, "0.11.2")
    assert env == {}
