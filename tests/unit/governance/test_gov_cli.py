"""`kustos status` rows and `kustos rollback` plans (the pure parts)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kustos.governance.inventory import rows, table
from kustos.governance.rollback import RollbackError, plan

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def md(name: str, ns: str = "ml", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "7"},
            "spec": {"model": {"version": "2", "uri": "s3://m/2.skops", "digest": D2},
                     "governance": {"owner": "risk", "riskTier": "high"}},
            "status": status}


def cond(type_: str, status: str) -> dict[str, str]:
    return {"type": type_, "status": status}


def test_inventory_rows() -> None:
    models = [md("b", conditions=[cond("Ready", "True"), cond("PolicyCompliant", "False")],
                 model={"version": "2"}),
              md("a", ns="ops", model={"version": "1"}),
              {"metadata": {"name": "c", "namespace": "ml"},
               "spec": {"model": {"version": "9", "uri": "s3://x.skops"}}}]
    monitors = [
        {"metadata": {"name": "dm1", "namespace": "ml"}, "spec": {"targetRef": {"name": "b"}},
         "status": {"conditions": [cond("DriftDetected", "True")]}},
        {"metadata": {"name": "dm2", "namespace": "ml"}, "spec": {"targetRef": {"name": "b"}},
         "status": {"conditions": [cond("DriftDetected", "False")]}},
        {"metadata": {"name": "dm3", "namespace": "ml"}, "spec": {"targetRef": {"name": "c"}}},
    ]
    out = rows(models, monitors)
    assert [(r["NAMESPACE"], r["NAME"]) for r in out] == [("ml", "b"), ("ml", "c"), ("ops", "a")]
    assert out[0] == {"NAMESPACE": "ml", "NAME": "b", "VERSION": "2", "READY": "True",
                      "DRIFT": "True", "OWNER": "risk", "RISK": "high", "COMPLIANT": "False"}
    assert (out[1]["DRIFT"], out[1]["OWNER"], out[1]["RISK"], out[1]["COMPLIANT"],
            out[1]["READY"]) == ("Unknown", "-", "low", "-", "Unknown")
    assert out[2]["VERSION"] == "1->2", "a rollout in progress shows served->wanted"
    text = table(out).splitlines()
    assert text[0].split() == ["NAMESPACE", "NAME", "VERSION", "READY", "DRIFT", "OWNER",
                               "RISK", "COMPLIANT"]
    assert text[1].split() == ["ml", "b", "2", "True", "True", "risk", "high", "False"]


HISTORY = [{"version": "1", "uri": "s3://m/1.skops", "digest": D1,
            "deployedAt": "2026-11-01T00:00:00Z"},
           {"version": "0", "uri": "s3://m/0.skops", "deployedAt": "2026-10-01T00:00:00Z"}]


def test_rollback_plan_previous_and_named_version() -> None:
    entry, patch = plan(md("m", history=HISTORY), None)
    assert entry["version"] == "1"
    assert patch == {"spec": {"model": {"version": "1", "uri": "s3://m/1.skops", "digest": D1}}}
    entry, patch = plan(md("m", history=HISTORY), "0")
    # No digest recorded: the newer digest is removed, not kept (merge patch null).
    assert patch["spec"]["model"] == {"version": "0", "uri": "s3://m/0.skops", "digest": None}


@pytest.mark.parametrize(("history", "to", "message"), [
    ([], None, "no deployed history"),
    (HISTORY, "5", "version 5 is not in m's history (known: 1, 0)"),
    ([{"version": "1", "digest": D1}], None, "has no uri"),
    ([{"version": "2", "uri": "s3://m/2.skops", "digest": D2}], None,
     "every version in m's history is the current one"),
    ([{"version": "2", "uri": "s3://m/2.skops", "digest": D2}], "2", "already specifies"),
])
def test_rollback_refusals(history: list[dict[str, Any]], to: str | None, message: str) -> None:
    with pytest.raises(RollbackError, match=re.escape(message)):
        plan(md("m", history=history), to)
