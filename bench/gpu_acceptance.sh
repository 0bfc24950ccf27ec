#!/usr/bin/env bash
# Issue 22's acceptance runs in one lease on the GPU machine, detached so no device call has to outlast its
# 10-minute limit: the default workflow (full.json, --profile default), the paper preset (full_paper.json,
# --profile paper, the same stand-in models), each in its own ComfyUI server, and bench/gpu_evidence.sh's three
# pieces, one after the other in the order given (never side by side: the timings are the result). The order
# matters when the lease is short: whatever finished before the machine went back is there.
#
#   source bench/gpu_e2e_setup.sh WORK                              # first (three back-to-back calls)
#   bash bench/gpu_acceptance.sh start WORK DIR [PIECE ...]          # detached (setsid nohup): returns at once
#   bash bench/gpu_acceptance.sh wait DIR S                          # wait up to S seconds; prints where it stands
#
# PIECE: default | paper | evidence | gate | probe (default: default paper evidence); EVIDENCE_PIECES="oracle prior"
# picks the evidence scripts (bench/gpu_evidence.sh; default all three).
#   gate   waits (up to GATE_SECONDS, default 900) for the file DIR/go, then goes on with IDSCULPT_COMMIT set to
#          its content when it has one: the pieces after it run the tree as it is then. For a decision that rests
#          on the evidence (bench/evidence_summary.py): `evidence gate default paper`; the next device call
#          syncs the decided tree and writes DIR/go. `wait` returns as soon as the gate waits.
#   probe  the tri-grid feature gradient, Triton kernel against PyTorch's (bench/probes/profile_fastpath.py
#          --parts panohead, DIR/prof), then its CUDA tests (tests/test_trigrid_grad.py, test_panohead_graphs.py).
# Results in DIR: pipeline_default.json / pipeline_paper.json (bench/results/ keeps them), their stage logs
# pipeline_<profile>.stages.jsonl (the runs' vram_stages.jsonl), the servers' logs, evidence/.
# On an H100: ~6 min (default, models built by the first server run) + ~8-9 min (paper) + ~7 min (evidence),
# estimated.
set -u
what="${1:?start|wait}"
case "$what" in
  start)
    work="${2:?WORK (the folder given to gpu_e2e_setup.sh)}" dir="${3:?result folder}"
    shift 3
    pieces="${*:-default paper evidence}"
    for p in $pieces; do
      case "$p" in default|paper|evidence|gate|probe) ;; *) echo "unknown piece: $p (default | paper | evidence | gate | probe)" >&2; exit 2 ;; esac
    done
    mkdir -p "$dir"
    portrait="${PORTRAIT:-.e2e/portrait.jpg}"
    cat > "$dir/run.sh" <<EOF
set -u
built=""
for p in $pieces; do
  if [ "\$p" = evidence ]; then
    bash bench/gpu_evidence.sh start '$dir/evidence' ${EVIDENCE_PIECES:-} && bash bench/gpu_evidence.sh wait '$dir/evidence' 1500
    continue
  fi
  if [ "\$p" = gate ]; then
    touch '$dir/gate.waiting'; t=0
    while [ ! -f '$dir/go' ] && [ \$t -lt ${GATE_SECONDS:-900} ]; do sleep 2; t=\$((t + 2)); done
    [ -s '$dir/go' ] && export IDSCULPT_COMMIT="\$(cat '$dir/go')"
    rm -f '$dir/gate.waiting'; echo "gate: went on after \$t s, IDSCULPT_COMMIT=\${IDSCULPT_COMMIT:-unset}" >> '$dir/gate.log'
    continue
  fi
  if [ "\$p" = probe ]; then
    for g in kernel native; do
      python bench/probes/profile_fastpath.py --out '$dir/prof' --parts panohead --tag tg_\$g --trigrid-grad \$g > '$dir/probe_'\$g'.log' 2>&1
    done
    python -m pytest -q -p no:cacheprovider tests/test_trigrid_grad.py tests/test_panohead_graphs.py > '$dir/probe_tests.log' 2>&1
    echo \$? > '$dir/probe.rc'
    continue
  fi
  python bench/bench_pipeline.py --work '$work' --portrait '$portrait' --out '$dir/pipeline_'\$p'.json' --profile \$p \
    --runs 1 --set IDSculptPanoHeadInvert.mesh_level=0.01 \$built > '$dir/'\$p'.log' 2>&1
  echo \$? > '$dir/'\$p'.rc'
  built="--skip-build"  # the stand-in models are written once
  cp '$work/vram_stages.jsonl' '$dir/pipeline_'\$p'.stages.jsonl' 2>/dev/null
  cp '$work/comfyui.log' '$dir/comfyui_'\$p'.log' 2>/dev/null
done
echo done > '$dir/done'
EOF
    setsid nohup bash "$dir/run.sh" > "$dir/run.log" 2>&1 &
    echo "started: $dir/run.sh (logs in $dir)"
    ;;
  wait)
    dir="${2:?result folder}" limit="${3:-560}" t=0
    while [ $t -lt "$limit" ] && [ ! -f "$dir/done" ] && { [ ! -f "$dir/gate.waiting" ] || [ -f "$dir/go" ]; }; do sleep 5; t=$((t + 5)); done
    [ -f "$dir/gate.waiting" ] && [ ! -f "$dir/go" ] && echo "== the gate waits for $dir/go"
    [ -f "$dir/gate.log" ] && cat "$dir/gate.log"
    if [ -f "$dir/evidence/oracle.json" ] && [ -f "$dir/evidence/prior.json" ]; then
      python bench/evidence_summary.py --oracle "$dir/evidence/oracle.json" --prior "$dir/evidence/prior.json" 2>&1 | tail -12
    fi
    [ -f "$dir/probe.rc" ] && { echo "== probe rc=$(cat "$dir/probe.rc")"; grep -h "ms a step" "$dir"/probe_*.log; tail -2 "$dir/probe_tests.log"; }
    for p in default paper; do
      echo "== $p rc=$(cat "$dir/$p.rc" 2>/dev/null || echo 'not finished')"; tail -2 "$dir/$p.log" 2>/dev/null
    done
    [ -d "$dir/evidence" ] && bash bench/gpu_evidence.sh wait "$dir/evidence" 0
    [ -f "$dir/done" ] && echo "all done" || echo "still running"
    ;;
  *) echo "usage: $0 start WORK DIR [default|paper|evidence|gate|probe ...] | wait DIR [seconds]" >&2; exit 2 ;;
esac
