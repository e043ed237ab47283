"""The ``call_tree`` expectation: edges a user says must be there, against what the
sidecars recorded.

The probes read the call tree off the evidence (:meth:`CallTree.observe`); a user's
``call_tree`` only adds an expectation. An expected call that no request's evidence shows
(no outbound access-log line, no outbound sidecar span of the caller towards the callee) is
a finding at the caller: either the chain does not call it, or its calls leave no trace,
and neither may pass unnoticed as "held".
"""

from __future__ import annotations

from collections.abc import Sequence

from probes.evidence.request import CallTree, RequestEvidence
from probes.results import Check, Evidence

__all__ = ["EXPECTED_CALLS", "expected_calls"]

EXPECTED_CALLS = "expected-calls"
_RULE = "every edge of call_tree shows in the sidecars' evidence of the requests sent"


def expected_calls(evidence: Sequence[RequestEvidence], expected: CallTree,
                   namespace: str | None = None) -> Check:
    """One check over all requests: which of ``expected``'s edges no request showed."""
    seen = set(CallTree.observe(evidence, namespace=namespace).edges())
    wanted = expected.edges()
    missing = [edge for edge in wanted if edge not in seen]
    if not missing:
        return Check(EXPECTED_CALLS, True, wanted, f"all {len(wanted)} expected calls seen "
                     f"in the evidence of {len(evidence)} requests", rule=_RULE,
                     counts={"evaluated": len(wanted), "held": len(wanted), "failed": 0,
                             "not_judged": 0}, basis=("sidecar",))
    caller, callee = missing[0]
    more = f" (+{len(missing) - 1} more: " + ", ".join(f"{a} -> {b}" for a, b in missing[1:]) \
        + ")" if len(missing) > 1 else ""
    return Check(EXPECTED_CALLS, False, wanted,
                 f"call_tree expects {caller} -> {callee}, but no outbound line or sidecar span "
                 f"of {caller} to {callee} shows in {len(evidence)} requests{more}",
                 hop=caller, rule=_RULE,
                 evidence=Evidence(tuple(ev.sent.trace_id for ev in evidence)),
                 counts={"evaluated": len(wanted), "held": len(wanted) - len(missing),
                         "failed": len(missing), "not_judged": 0}, basis=("sidecar",))
