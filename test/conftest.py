"""Test isolation for ROS 2: loopback-only discovery and a fresh ROS domain per test.

Two processes on one ROS_DOMAIN_ID hear each other, so every test gets its own domain id (also
exported for the node processes a test starts) and its own rclpy context.
"""
import itertools
import os

import pytest

from bimanual_core.config import runtime_environment

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
runtime_environment(os.environ)

# Linux allows domain ids 0..101 with the default port mapping; spread test runs over 1..100.
_domains = itertools.count(1 + (os.getpid() * 7) % 100)


@pytest.fixture
def ros_domain(monkeypatch):
    """A domain id of this test's own, exported so that child processes inherit it."""
    domain = next(_domains) % 100 + 1
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return domain


@pytest.fixture
def ros_context(ros_domain):
    """An initialised rclpy context on the test's domain, shut down afterwards."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain)
    yield ctx
    rclpy.shutdown(context=ctx)
