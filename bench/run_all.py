"""Run the stage benchmarks on the GPU and write the stage table into docs/PERFORMANCE.md.

``bench/results`` holds the LATEST result of each benchmark, one file each (``<stage>.json``; history
is git's). Each bench/bench_<stage>.py writes its JSON (``--out``); this script runs them one after
the other (so peak VRAM is per stage), overwrites ``<stage>.json`` with what it measured (stamped with
the date and the commit), and renders the stage table inside docs/PERFORMANCE.md (between its
generated-table markers): each step at the shipped workflow's default counts, ms per step, seconds,
peak VRAM, FLOPs per step (bench_flops.py), the floor at the card's measured rate (card.json from
bench_card.py) and the ratio to it, then the projection per stage beside the stage times of the latest
ComfyUI server run (``pipeline_default.stages.jsonl``, the stage records bench_pipeline.py collects).
Usage on a CUDA machine:

    python bench/run_all.py [--stages card,flops,render,sculpt,isd,panohead,texture,landmarks]
    python bench/run_all.py --report-only        # re-render the table from bench/results
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:  # also when imported by the tests, not only run as a script
    sys.path.insert(0, HERE)
import _stamp  # noqa: E402
from _projection import (card_rates, default_counts, read_server_stages, render_tables, replace_block,  # noqa: E402
                         step_rows, workflow_settings)
STAGES = ["card", "flops", "render", "sculpt", "isd", "panohead", "texture", "landmarks"]
SERVER_STAGES = "pipeline_default.stages.jsonl"  # bench_pipeline.py --profile default: <work>/vram_stages.jsonl, copied here


def run_stage(stage: str, out_dir: str, extra: list[str], timeout: int) -> dict:
    """Run bench_<stage>.py; on success its JSON replaces ``<stage>.json`` (stamped ``measured``: date, commit),
    on failure the previous result stays and the error is returned."""
    script = os.path.join(HERE, f"bench_{stage}.py")
    out = os.path.join(out_dir, f"{stage}.json")
    if not os.path.isfile(script):
        return {"stage": stage, "error": "no benchmark script"}
    t0 = time.time()
    tmp = out + ".running"
    proc = subprocess.run([sys.executable, script, "--out", tmp, *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode != 0 or not os.path.isfile(tmp):
        if os.path.isfile(tmp):
            os.remove(tmp)
        return {"stage": stage, "error": f"exit {proc.returncode}", "log_tail": log}
    with open(tmp) as fh:
        data = json.load(fh)
    os.remove(tmp)
    data.setdefault("wall_s", round(time.time() - t0, 1))
    data["measured"] = _stamp.measured()
    with open(out, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return data


def stage_table(results: dict[str, dict], workflow: str, server_stages: str | None = None, card_tflops: float | None = None,
                card_source: str = "", sources: dict[str, str] | None = None) -> str:
    """The generated stage table (see _projection) for these results at the workflow's default counts."""
    settings = workflow_settings(workflow)
    card = results.get("card")
    rates = card_rates(card if card and "error" not in card else None, card_tflops, card_source)
    server = read_server_stages(server_stages)
    good = {k: v for k, v in results.items() if "error" not in v}
    rows = step_rows(good, default_counts(settings), rates, grid_resolution=int(settings["sculpt"]["grid_resolution"]), server=server)
    cards = sorted({str(v["device"]) for k, v in good.items() if k != "flops" and "device" in v})
    intro = (f"Steps at the defaults of `{os.path.relpath(workflow, ROOT)}`"
             + (f"; server run: `{os.path.relpath(server_stages, ROOT)}`" if server else "") + ".\n\n")
    return intro + render_tables(rows, rates, server, sources, card=", ".join(cards))


def _measured(data: dict) -> str:
    m = data.get("measured") or {}
    return ", ".join(str(m[k]) for k in ("date", "commit") if m.get(k))


def load_results(stages: list[str], out_dir: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Each stage's ``<stage>.json`` from ``out_dir`` (the latest result of that benchmark), and for each
    found file its name with when and at which commit it was measured."""
    results, sources = {}, {}
    for stage in stages:
        path = os.path.join(out_dir, f"{stage}.json")
        if not os.path.isfile(path):
            results[stage] = {"error": "no result file"}
            continue
        with open(path) as fh:
            results[stage] = json.load(fh)
        when = _measured(results[stage])
        sources[stage] = f"{stage}.json" + (f" ({when})" if when else "")
    return results, sources


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="the latest result of each benchmark")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--report-only", action="store_true", help="render the table from --out-dir without running anything")
    ap.add_argument("--timeout", type=int, default=400)
    ap.add_argument("--performance", default=os.path.join(ROOT, "docs", "PERFORMANCE.md"),
                    help="the document whose generated stage table is replaced ('' = print it instead)")
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "api", "full.json"), help="default step counts come from here")
    ap.add_argument("--server-stages", default=None,
                    help=f"a ComfyUI run's stage records (default: {SERVER_STAGES} in --out-dir; '' = none)")
    ap.add_argument("--card-tflops", type=float, default=None, help="the card's rate when --out-dir has no card.json")
    ap.add_argument("--card-source", default="given on the command line", help="where --card-tflops comes from")
    args, extra = ap.parse_known_args()
    os.makedirs(args.out_dir, exist_ok=True)
    stages = args.stages.split(",")
    if not args.report_only:
        for stage in stages:
            print(f"== {stage}", flush=True)
            try:
                data = run_stage(stage, args.out_dir, extra, args.timeout)
            except subprocess.TimeoutExpired:
                data = {"error": f"timed out after {args.timeout} s"}
            print(json.dumps(data)[:2000], flush=True)
    # the table always renders from the files, so a stage that failed now shows its previous result
    results, sources = load_results(stages, args.out_dir)
    server_stages = os.path.join(args.out_dir, SERVER_STAGES) if args.server_stages is None else args.server_stages
    table = stage_table(results, args.workflow, server_stages or None, args.card_tflops, args.card_source, sources)
    if not args.performance:
        print(table)
        return
    with open(args.performance) as fh:
        doc = fh.read()
    with open(args.performance, "w") as fh:
        fh.write(replace_block(doc, table))
    print("wrote the stage table into", args.performance)


if __name__ == "__main__":
    main()
