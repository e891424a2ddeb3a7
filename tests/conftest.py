"""Shared fixtures. Server fixtures live in tests/servers/, one module per kind."""

pytest_plugins: list = [
    # each module under tests/servers/ that defines fixtures is listed here
    "tests.servers.postgres",
    "tests.servers.mariadb",
    "tests.servers.redis",
    "tests.servers.s3",
    "tests.servers.docker",
]
