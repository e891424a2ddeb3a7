"""doctor's checks run in threads; what they import lazily is loaded first.

CPython's import can raise ``KeyError: '<package>'`` when threads import
submodules of a package none has finished loading (gh-83065); a doctor check
crashed that way in CI. The check threads must find those packages loaded.
"""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from backupagent.cli import doctor
lazy = doctor._LAZY_CHECK_MODULES
missing_before = [m for m in lazy if m not in sys.modules]
doctor.build_checks(doctor.DoctorContext(app=None))
print(len(missing_before), [m for m in lazy if m not in sys.modules])
"""


def test_build_checks_loads_what_the_check_threads_import() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    assert int(out[0]) > 0  # importing doctor alone does not load them ...
    assert out[1].strip() == "[]"  # ... building the checks does


def test_every_lazy_import_in_a_check_has_its_package_preloaded() -> None:
    """A check importing from a new package must add a module of it to the list."""
    import ast
    import inspect

    from backupagent.cli import doctor

    tree = ast.parse(inspect.getsource(doctor))
    lazy = {
        node.module
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef) and fn.name.startswith("check_")
        for node in ast.walk(fn)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backupagent.")
    }
    assert "backupagent.engines.process" in lazy  # the walk sees the checks' imports
    loaded = {"backupagent"} | {m.rsplit(".", 1)[0] for m in doctor._LAZY_CHECK_MODULES}
    alone = {"backupagent.verify"}  # only the docker check imports from it
    assert {m.rsplit(".", 1)[0] for m in lazy} - alone <= loaded, lazy
