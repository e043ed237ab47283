"""Chaos Toolkit controls of meshchaos, one module per control.

- ``probes.controls.localmesh``: start (or reuse) the local mesh when ``target`` is ``local``
  and hand its endpoints to the activities through the configuration;
- ``probes.controls.safety``: namespace allowlist and run id (owned by the chaos actions);
- ``probes.controls.report``: judge the journal, write the run's report and make
  ``chaos run`` exit non-zero on anything but PASS.

Declare them in this order in an experiment's ``controls`` so the mesh is up before
safety checks the namespaces and the report is written last.
"""
