"""Chaos Toolkit controls of meshchaos, one module per control.

- ``probes.controls.localmesh``: start (or reuse) the local mesh when ``target`` is ``local``
  and hand its endpoints to the activities through the configuration;
- ``probes.controls.safety``: namespace allowlist and run id (owned by the chaos actions);
- ``probes.controls.report``: judge the journal, write the run's report and make
  ``chaos run`` exit non-zero on anything but PASS.

Declare them in this order in an experiment's ``controls`` so the mesh is up before
safety checks the namespaces and the report is written last.
"""

from __future__ import annotations

import atexit
import gc

__all__ = ["skip_collection_at_exit"]

_registered = False


def skip_collection_at_exit() -> None:
    """Let the ``chaos`` process exit without sweeping its heap (idempotent).

    Finalisation runs the cyclic collector over every object left, and the Kubernetes
    client alone leaves hundreds of thousands (its models and pydantic-wrapped API
    methods): 0.4 s of a run's wall time spent after the journal is written, for memory
    the OS takes back anyway. ``gc.freeze()`` at exit moves them out of the collector's
    reach; atexit runs only when the interpreter ends, so a long-lived process that
    merely calls the controls (a test session) collects as usual until then.
    """
    global _registered
    if not _registered:
        _registered = True
        atexit.register(gc.freeze)
