"""Issue 22's two sculpt evidence pieces side by side: each schedule's Chamfer over PAPER's under the oracle
(bar: 5 %) and under the small trained prior (bar: 10 %), and which schedules pass both.

    python bench/evidence_summary.py                       # bench/results/evidence_{oracle_sculpt,trained_prior}.json
    python bench/evidence_summary.py --oracle A.json --prior B.json [--json]

A schedule passes when it is in both files, each file is at full scale (the shipped step counts; grid 256 for
the oracle) and its Chamfer is within that file's bar of PAPER's. The trained prior counts only when its PAPER
and FAST sculpts both ended closer to the person than they started (``sculpted_toward_person``): a prior that
moves nothing makes every ratio ~1. ``fewest_isd_steps`` is the passing schedule with the fewest ISD steps: what
a faster default may use (core/schedules.py FAST; tests/test_schedule_evidence.py ties FAST to these files).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402  (bench/; the pack's import is light: no torch)

_pack.load()

from idsculpt.core.schedules import Schedule  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLE = os.path.join(ROOT, "bench", "results", "evidence_oracle_sculpt.json")
PRIOR = os.path.join(ROOT, "bench", "results", "evidence_trained_prior.json")
ORACLE_BOUND, PRIOR_BOUND = 0.05, 0.10


def oracle_rows(oracle: dict) -> dict[str, dict]:
    """Per schedule: ISD steps, views per step, view samples and Chamfer / PAPER's under the oracle."""
    paper = oracle["runs"]["paper"]["chamfer"]
    rows = {}
    for name, r in oracle["runs"].items():
        s = Schedule(**r["schedule_fields"])
        rows[name] = {"isd_steps": s.isd_steps, "guidance_views": s.guidance_views, "isd_view_samples": s.isd_view_samples,
                      "oracle": r["chamfer"] / paper}
    return rows


def prior_ratios(prior: dict) -> dict[str, float]:
    paper = prior["chamfer_paper"]
    return {name: r["chamfer"] / paper for name, r in prior["runs"].items() if name in ("paper", "fast") or name.startswith("fast_isd")}


def summarize(oracle: dict, prior: dict) -> dict:
    full_oracle = bool(oracle["scale"]["shipped_step_counts"]) and oracle["scale"]["grid_resolution"] == 256
    full_prior = not prior.get("smoke") and prior["args"].get("sculpt_divisor", 1) == 1 and prior["args"].get("grid") == 256
    prior_moves = bool(prior.get("sculpted_toward_person"))
    pr = prior_ratios(prior)
    rows = {}
    for name, row in oracle_rows(oracle).items():
        row = dict(row, prior=pr.get(name))
        row["passes"] = (name != "paper" and full_oracle and full_prior and prior_moves and row["prior"] is not None
                         and row["oracle"] <= 1 + ORACLE_BOUND and row["prior"] <= 1 + PRIOR_BOUND)
        rows[name] = row
    passing = [n for n, r in rows.items() if r["passes"]]
    fewest = min(passing, key=lambda n: (rows[n]["isd_view_samples"], n), default=None)
    return {"full_scale": {"oracle": full_oracle, "prior": full_prior}, "prior_sculpts_toward_person": prior_moves,
            "schedules": rows, "passing": passing, "fewest_isd_steps": fewest,
            "cards": {"oracle": oracle.get("device"), "prior": prior.get("card")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", default=ORACLE)
    ap.add_argument("--prior", default=PRIOR)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    with open(a.oracle) as fh:
        oracle = json.load(fh)
    with open(a.prior) as fh:
        prior = json.load(fh)
    s = summarize(oracle, prior)
    if a.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"full scale: oracle {s['full_scale']['oracle']}, prior {s['full_scale']['prior']}; "
          f"the prior sculpts toward the person: {s['prior_sculpts_toward_person']}; cards {s['cards']}")
    for name, r in s["schedules"].items():
        prior_s = "-" if r["prior"] is None else f"{r['prior']:.3f}"
        print(f"{name:20s} ISD {r['isd_steps']:5d} x {r['guidance_views']}  oracle x{r['oracle']:.3f}  prior x{prior_s}"
              f"  {'PASS' if r['passes'] else ''}")
    print("fewest ISD steps passing both:", s["fewest_isd_steps"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
