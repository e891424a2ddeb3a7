"""The daemon's first jobs import their lazy modules one job at a time.

CPython's import can raise ``KeyError: '<package>'`` when threads import
submodules of packages none has finished loading (gh-83065). Two schedules
firing at once would import boto3, docker or cryptography from two threads,
so each job first loads, under one lock, what its threads will import.
"""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, sys
from types import SimpleNamespace as NS
from backupagent.jobs.runner import preload_job_modules

kind, encrypted, verify = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
target = NS(id="t", type=kind, encryption=NS(recipients=["age1x"] if encrypted else []))
config = NS(target=lambda tid: target)
schedule = NS(target_id="t", database=NS(db_type="postgres"), verification=NS(enabled=verify))
watch = ["backupagent.engines.postgresql", "backupagent.pipeline.run", "backupagent.crypto.age",
         "botocore.session", "docker", "backupagent.verify.run"]
preload_job_modules(schedule, config)
print(json.dumps({m: m in sys.modules for m in watch}))
"""


def loaded(kind: str, encrypted: bool, verify: bool) -> dict:
    argv = [sys.executable, "-c", CODE, kind, str(int(encrypted)), str(int(verify))]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_an_encrypted_verified_s3_job_loads_everything_its_threads_import() -> None:
    assert all(loaded("s3", True, True).values())


def test_a_plain_local_job_loads_only_what_it_needs() -> None:
    """The idle daemon's footprint rule holds: no boto3, docker or age for it."""
    got = loaded("local", False, False)
    assert got["backupagent.engines.postgresql"] and got["backupagent.pipeline.run"]
    assert not got["botocore.session"] and not got["docker"]
    assert not got["backupagent.crypto.age"] and not got["backupagent.verify.run"]


def test_a_schedule_naming_a_missing_target_is_left_to_the_job_to_report() -> None:
    from types import SimpleNamespace as NS

    from backupagent.jobs.runner import preload_job_modules

    def no_target(tid: str) -> None:
        raise KeyError(tid)

    schedule = NS(target_id="gone", database=NS(db_type="nosuchdb"), verification=NS(enabled=False))
    preload_job_modules(schedule, NS(target=no_target))  # no exception


def test_a_module_that_fails_to_load_is_left_to_its_user() -> None:
    import sys

    from backupagent.preload import preload

    preload(["backupagent.no_such_module", "backupagent.retention"])  # no exception
    assert "backupagent.retention" in sys.modules  # the rest still loaded
