"""The full workflow end to end through a real ComfyUI server on the GPU, with full-size stand-in models.

Builds (once) random-weight stand-ins of every model the workflow loads in their real formats and
sizes (tests/build_test_models.py --size full: SD1.5 checkpoints, ControlNets, FaceID adapter,
InsightFace, the release-configuration PanoHead pickle, VGG16), starts ComfyUI headless on the GPU
with the pack, queues the API workflow ``--runs`` times (each run changes a PanoHead Invert input so
every downstream node executes again) and records:

* wall time of every node (websocket ``executing`` events) and of the whole run;
* per IDSculpt stage (PanoHead Invert, DMTet Sculpt, Progressive Inpaint, Texture Refine): peak VRAM
  from the stage's start (``torch.cuda.max_memory_allocated``, nodes/engines/vram.py), the peak of whatever
  ran since the previous stage (ComfyUI's KSamplers, loaders), and the stage's seconds;
* CUDA memory held by ComfyUI's PyTorch after every run and after ``/free`` (``/system_stats``),
  against the level before the first run: repeated runs must not grow it.

    python bench/bench_pipeline.py --work WORK --portrait face.png --out $OUT/pipeline.json [--profile lowered|default]
        [--runs 3] [--set NODE.INPUT=VALUE ...] [--vram-mode low_vram] [--vram-cap-gib 8] [--comfy PATH]

``WORK`` is a folder outside the repo (the models are built there once and reused, ComfyUI's sandbox too).

``--profile lowered`` keeps every model and resolution at full size but lowers the step counts so a
run takes about a minute; ``default`` is ``workflows/api/full.json`` as shipped (the fast schedule of
core/schedules.py, nothing to pass by hand); ``paper`` is ``workflows/api/full_paper.json`` (the paper's
schedule). The result records whether CUDA graphs engaged (``cuda_graphs``: the pack's graph log lines).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import _stamp  # noqa: E402  (bench/, the script's directory)
import comfy_harness as ch  # noqa: E402
from comfy_server import ComfyError, ComfyServer  # noqa: E402
from run_pipeline import apply_overrides  # noqa: E402

#: full-size models and resolutions, fewer steps: every stage runs at its real per-step cost
LOWERED = [
    "IDSculptPanoHeadInvert.w_steps=20", "IDSculptPanoHeadInvert.pti_steps=20",
    "IDSculptDMTetSculpt.steps=100", "IDSculptDMTetSculpt.gan_steps=30",
    "IDSculptProgressiveInpaint.max_faces=30000",
    "IDSculptTextureRefine.refine_steps=20",
]
STAGE_NODES = ("IDSculptPanoHeadInvert", "IDSculptDMTetSculpt", "IDSculptProgressiveInpaint", "IDSculptTextureRefine")


def log(*a: Any) -> None:
    print(*a, flush=True)


GRAPH_MARKERS = ("CUDA graphs off", "captured a CUDA graph", "IDSculpt CUDA graphs:", "without CUDA graphs")


def graph_report(server_log: str) -> dict:
    """Whether the pack's CUDA graphs engaged in a run, from its log lines (nodes/cuda_graphs.py,
    core/cuda_graph.py): captures counted, every 'off' reason and the per-run replay statistics kept."""
    lines = [ln.strip() for ln in server_log.splitlines() if any(m in ln for m in GRAPH_MARKERS)]
    captures = sum("captured a CUDA graph" in ln for ln in lines)
    off = sorted({ln for ln in lines if "CUDA graphs off" in ln or "without CUDA graphs" in ln})
    stats = [ln for ln in lines if "IDSculpt CUDA graphs:" in ln]
    return {"engaged": captures > 0, "captures": captures, "off_reasons": off[:20], "stats": stats[:20]}


def build_models(sandbox: ch.ComfySandbox, comfy: str, python: str) -> float:
    t0 = time.time()
    cmd = [python, os.path.join(ROOT, "tests", "build_test_models.py"), "--models-dir", sandbox.models_dir,
           "--size", "full", "--comfyui", comfy]
    subprocess.run(cmd, check=True)
    return time.time() - t0


class NodeTimer:
    """Websocket events -> seconds per node (the time from its 'executing' event to the next one)."""

    def __init__(self, wf: dict) -> None:
        self.wf = wf
        self.t0 = time.monotonic()
        self.current: Optional[str] = None
        self.started = 0.0
        self.seconds: dict[str, float] = {}
        self.last_print = 0.0

    def _close(self, now: float) -> None:
        if self.current is not None:
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + now - self.started, 2)

    def __call__(self, kind: str, data: dict) -> None:
        now = time.monotonic()
        if kind == "executing":
            self._close(now)
            self.current, self.started = data.get("node"), now
            if self.current is not None:
                log(f"[{now - self.t0:7.1f}s] {self.current} {self.wf.get(str(self.current), {}).get('class_type')}")
        elif kind == "progress" and now - self.last_print > 15:
            self.last_print = now
            log(f"[{now - self.t0:7.1f}s]   step {data.get('value')}/{data.get('max')}")

    def table(self) -> list[dict]:
        rows = []
        for nid, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            n = self.wf.get(str(nid), {})
            rows.append({"node": nid, "class_type": n.get("class_type"), "title": n.get("_meta", {}).get("title"), "seconds": s})
        return rows


def torch_memory(server: ComfyServer) -> dict:
    dev = (server.get("/system_stats").get("devices") or [{}])[0]
    total, free = dev.get("torch_vram_total", 0), dev.get("torch_vram_free", 0)
    return {"allocated_mib": round((total - free) / 2**20, 1), "reserved_mib": round(total / 2**20, 1),
            "device_used_mib": round((dev.get("vram_total", 0) - dev.get("vram_free", 0)) / 2**20, 1)}


def cuda_census(server: ComfyServer, nonce: int) -> Optional[dict]:
    """The harness pack's HarnessCudaCensus in the server: live CUDA tensors grouped by holder."""
    try:
        pid = server.queue({"1": {"class_type": "HarnessCudaCensus", "inputs": {"nonce": nonce}}})
        server.wait(pid, timeout=120)
        hist = server.history(pid) or {}
        return json.loads(hist["outputs"]["1"]["text"][0])
    except Exception as e:  # noqa: BLE001 - a diagnostic: never fail the benchmark over it
        return {"error": str(e)[:500]}


def free_and_measure(server: ComfyServer, result: dict) -> None:
    """``POST /free`` (unload models, drop caches), then record what stays: PyTorch's memory and the census."""
    server.request("POST", "/free", json.dumps({"unload_models": True, "free_memory": True}).encode(),
                   {"Content-Type": "application/json"})
    time.sleep(3)  # the prompt worker acts on the flags between prompts
    result["memory_after_free"] = torch_memory(server)
    result["census_after_free"] = cuda_census(server, 1_000_000 + len(result["runs"]))
    log("after /free:", json.dumps(result["memory_after_free"]), json.dumps(result["census_after_free"])[:3000])


def read_stage_log(path: str, start: int) -> tuple[list[dict], int]:
    if not os.path.isfile(path):
        return [], start
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    return [json.loads(x) for x in lines[start:] if x.strip()], len(lines)


def run_once(server: ComfyServer, wf: dict, run: int, timeout: Optional[float], stage_log: str, seen: int) -> tuple[dict, int]:
    for node in wf.values():
        if node.get("class_type") == "IDSculptPanoHeadInvert":
            # a new input makes ComfyUI execute it and every node downstream again; the inversion seed stays
            # (with random weights some seeds give a density with no surface at the marching-cubes level)
            node["inputs"]["view_resolution"] = 256 - 16 * run
    ws = server.connect_ws()
    timer = NodeTimer(wf)
    t0 = time.monotonic()
    pid = server.queue(wf)
    try:
        server.wait(pid, ws, timer, timeout=timeout)
        ok, err = True, None
    except ComfyError as e:
        ok, err = False, str(e)[:2000]
    finally:
        if ws is not None:
            ws.close()
    timer._close(time.monotonic())
    stages, seen = read_stage_log(stage_log, seen)
    rec = {"run": run, "ok": ok, "error": err, "wall_s": round(time.monotonic() - t0, 1), "stages": stages,
           "nodes": timer.table(), "memory_after": torch_memory(server)}
    if stages:
        rec["peak_vram_mib"] = max(max(s.get("peak_mib", 0), s.get("peak_before_mib", 0)) for s in stages)
    log(json.dumps({k: rec[k] for k in ("run", "ok", "wall_s", "memory_after", "peak_vram_mib") if k in rec}))
    if err:
        log("ERROR:", err)
    return rec, seen


def detach_or_finish(server: ComfyServer, wf: dict, args, stage_log: str, result: dict) -> bool:
    """Queue one run; wait up to --detach-after seconds. True (and resume.json written) when it is still running."""
    ws = server.connect_ws()
    timer = NodeTimer(wf)
    pid = server.queue(wf)
    t_start = time.time()
    try:
        server.wait(pid, ws, timer, timeout=args.detach_after)
        done = True
    except ComfyError as e:
        done = "did not finish" not in str(e) and "timed out" not in str(e).lower()
        if done:
            result["runs"].append({"run": 0, "ok": False, "error": str(e)[:2000]})
    finally:
        if ws is not None:
            ws.close()
    if done and not result["runs"]:
        timer._close(time.monotonic())
        stages, _ = read_stage_log(stage_log, 0)
        rec = {"run": 0, "ok": True, "error": None, "wall_s": round(time.time() - t_start, 1), "stages": stages,
               "nodes": timer.table(), "memory_after": torch_memory(server)}
        result["runs"].append(rec)
        return False
    if done:
        return False
    timer._close(time.monotonic())
    state = {"url": server.url, "pid": server.proc.pid if server.proc else None, "prompt_id": pid, "t_start": t_start,
             "stage_log": stage_log, "nodes_before_detach": timer.table(), "result": result, "out": args.out, "wf": wf,
             "work": args.work, "log": os.path.join(args.work, "comfyui.log")}
    with open(os.path.join(args.work, "resume.json"), "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    server.proc = None  # keep it running
    log(f"detached after {args.detach_after:.0f} s: server {server.url} (pid {state['pid']}) runs on; --resume to finish")
    return True


def resume(args) -> int:
    with open(os.path.join(args.work, "resume.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    result = state["result"]
    server = ComfyServer(url=state["url"])
    server.start()
    ws = server.connect_ws()
    try:
        server.wait(state["prompt_id"], ws, NodeTimer({}), timeout=args.timeout)
        ok, err = True, None
    except ComfyError as e:
        ok, err = False, str(e)[:2000]
    finally:
        if ws is not None:
            ws.close()
    stages, _ = read_stage_log(state["stage_log"], 0)
    rec = {"run": 0, "ok": ok, "error": err, "wall_s": round(time.time() - state["t_start"], 1), "stages": stages,
           "nodes_before_detach": state["nodes_before_detach"], "memory_after": torch_memory(server),
           "detached": True}
    if stages:
        rec["peak_vram_mib"] = max(max(s.get("peak_mib", 0), s.get("peak_before_mib", 0)) for s in stages)
    result["runs"].append(rec)
    log(json.dumps({k: rec[k] for k in ("run", "ok", "wall_s", "memory_after", "peak_vram_mib") if k in rec}))
    # --runs N: N more runs on the same server (lowered steps), for the memory-across-runs check
    _, seen = read_stage_log(state["stage_log"], 0)
    wf = state["wf"]
    classes = {n.get("class_type") for n in wf.values()}
    apply_overrides(wf, [o for o in LOWERED if o.split(".")[0] in classes])
    for run in range(1, args.runs + 1 if ok else 1):
        more, seen = run_once(server, wf, run, args.timeout, state["stage_log"], seen)
        more["profile"] = "lowered"
        result["runs"].append(more)
    free_and_measure(server, result)
    if state.get("pid"):
        try:
            os.kill(state["pid"], 15)
        except OSError:
            pass
    with open(state["log"], encoding="utf-8", errors="replace") as fh:
        result["log_tail"] = fh.read()[-6000:]
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    log(json.dumps({k: v for k, v in rec.items() if k not in ("nodes_before_detach",)}, indent=1))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="work folder (models, sandbox); models are built once and reused")
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, ".comfy", "ComfyUI"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--workflow", default=None, help="API workflow (default: full.json; full_paper.json with --profile paper)")
    ap.add_argument("--portrait", required=True, help="portrait image (one face)")
    ap.add_argument("--profile", choices=["lowered", "default", "paper"], default="lowered")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE")
    ap.add_argument("--vram-mode", choices=["offload", "keep_loaded", "low_vram"], default=None,
                    help="set vram_mode on every IDSculpt stage node")
    ap.add_argument("--vram-cap-gib", type=float, default=None, help="cap PyTorch's allocations in ComfyUI (IDSCULPT_VRAM_CAP_GIB)")
    ap.add_argument("--comfy-arg", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--census", action="store_true", help="after each run too, list the live CUDA tensors by holder "
                    "(the harness node HarnessCudaCensus; always done after /free)")
    ap.add_argument("--detach-after", type=float, default=None, metavar="S",
                    help="one run: if it has not finished after S seconds, leave the server running (own session) and "
                         "write <work>/resume.json; go on later with --resume (for runs longer than one command may last)")
    ap.add_argument("--resume", action="store_true", help="wait for the run left by --detach-after, then --runs more "
                    "lowered runs on the same server (memory across runs), then finish as usual")
    args = ap.parse_args()
    if args.workflow is None:
        args.workflow = os.path.join(ROOT, "workflows", "api", "full_paper.json" if args.profile == "paper" else "full.json")
    if args.resume:
        return resume(args)

    os.makedirs(args.work, exist_ok=True)
    sandbox = ch.ComfySandbox(args.work)
    result: dict = {"profile": args.profile, "workflow": os.path.basename(args.workflow), "runs": []}
    try:
        import torch

        result["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        result["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    if not args.skip_build:
        result["build_models_s"] = round(build_models(sandbox, args.comfy, args.python), 1)
        log("models built in", result["build_models_s"], "s")

    with open(args.workflow, encoding="utf-8") as fh:
        wf = json.load(fh)
    overrides = (LOWERED if args.profile == "lowered" else []) + list(args.overrides)
    if args.vram_mode:
        overrides += [f"{c}.vram_mode={args.vram_mode}" for c in STAGE_NODES]
    apply_overrides(wf, overrides)
    result["overrides"] = overrides

    stage_log = os.path.join(args.work, "vram_stages.jsonl")
    if os.path.exists(stage_log):
        os.remove(stage_log)
    env_extra = {"IDSCULPT_VRAM_LOG": stage_log}
    if args.vram_cap_gib:
        env_extra["IDSCULPT_VRAM_CAP_GIB"] = str(args.vram_cap_gib)
        result["vram_cap_gib"] = args.vram_cap_gib
    os.environ.update(env_extra)
    extra = [a for a in sandbox.args() if a != "--cpu"] + list(args.comfy_arg)
    server = ComfyServer(args.comfy, args.python, extra, log_path=os.path.join(args.work, "comfyui.log"),
                         own_session=bool(args.detach_after))
    t0 = time.monotonic()
    server.start()
    result["server_start_s"] = round(time.monotonic() - t0, 1)
    try:
        name = server.upload_image(args.portrait)
        for node in wf.values():
            if node.get("class_type") == "LoadImage":
                node["inputs"]["image"] = name
        result["memory_before"] = torch_memory(server)
        seen = 0
        if args.detach_after:
            if detach_or_finish(server, wf, args, stage_log, result):
                return 0
            args.runs = 0
        for run in range(args.runs):
            rec, seen = run_once(server, wf, run, args.timeout, stage_log, seen)
            if args.census:
                rec["census"] = cuda_census(server, run)
            result["runs"].append(rec)
            if not rec["ok"]:
                break
        free_and_measure(server, result)
    finally:
        server.stop()
        with open(os.path.join(args.work, "comfyui.log"), encoding="utf-8", errors="replace") as fh:
            server_log = fh.read()
        result["log_tail"] = server_log[-6000:]
        result["cuda_graphs"] = graph_report(server_log)
        result["measured"] = _stamp.measured(f"bench_pipeline.py --profile {args.profile}")
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    log(json.dumps({k: v for k, v in result.items() if k not in ("runs", "log_tail")}, indent=1))
    return 0 if result["runs"] and all(r["ok"] for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
