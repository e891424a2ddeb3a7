"""Shared fixtures. Server fixtures live in tests/servers/, one module per kind."""

import os

pytest_plugins: list = [
    # each module under tests/servers/ that defines fixtures is listed here
    "tests.servers.postgres",
    "tests.servers.mariadb",
    "tests.servers.redis",
    "tests.servers.s3",
    "tests.servers.docker",
]


# CI runs property tests with a fixed seed sequence: a red CI should mean a
# change broke something, not that a new random example was drawn. Locally
# they explore new examples every run.
if os.environ.get("CI"):
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.load_profile("ci")
