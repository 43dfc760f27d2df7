"""The test-only robot interface packages (test/interfaces/, built by `make test` into
build/test_interfaces/): put them on this process's path, or into a child's environment.

They are never on the stack's own path, so a bridge started without `with_test_interfaces` shows
what a user without the robot's packages sees.
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

from bimanual_core.config import repo_root

PREFIX = repo_root() / "build" / "test_interfaces"


def _site_packages() -> Path:
    found = sorted(PREFIX.glob("lib/python3*/site-packages"))
    if not found or not (found[0] / "interbotix_xs_msgs").is_dir() \
            or not (found[0] / "franka_msgs").is_dir():
        pytest.fail(f"the test interface packages are not built in {PREFIX}; run `make test` "
                    "(or `bash scripts/setup_env.sh test_interfaces`)")
    return found[0]


def load_test_interfaces() -> None:
    """Make interbotix_xs_msgs and franka_msgs importable and usable in this process.

    rosidl loads a package's type support libraries by file name, which the dynamic loader only
    finds on the LD_LIBRARY_PATH the process started with; loading them by full path first
    makes those lookups find the already-loaded libraries."""
    site = str(_site_packages())
    if site not in sys.path:
        sys.path.insert(0, site)
    for lib in sorted((PREFIX / "lib").glob("lib*__rosidl_typesupport_*.so")):
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


def interface_environment(env: dict | None = None) -> dict[str, str]:
    """PYTHONPATH and LD_LIBRARY_PATH of `env` (default: this process's) with the test
    interfaces in front, for the processes that must see them."""
    env = os.environ if env is None else env
    out = {}
    for var, value in (("PYTHONPATH", str(_site_packages())),
                       ("LD_LIBRARY_PATH", str(PREFIX / "lib"))):
        old = env.get(var)
        out[var] = f"{value}{os.pathsep}{old}" if old else value
    return out


def with_test_interfaces(monkeypatch) -> None:
    """The test interfaces in this process and in the processes this test starts."""
    load_test_interfaces()
    for var, value in interface_environment().items():
        monkeypatch.setenv(var, value)
