#!/usr/bin/env bash
# Issue 22's evidence at the shipped step counts on the GPU machine, side by side: the oracle guidance
# (bench/evidence_oracle_sculpt.py, grid 256, 512 px), the small trained prior of the sculpt
# (bench/evidence_trained_prior.py) and the trained texture prior of refinement's sampler steps
# (bench/evidence_trained_texture.py). They are launch-bound or small and share the one GPU as processes,
# so together they take about as long as the longest (~6-7 min on an H100, estimated).
#
#   bash bench/gpu_evidence.sh start DIR    # detached (setsid nohup): survives the device call that starts it
#   bash bench/gpu_evidence.sh wait DIR S   # wait up to S seconds for all three; prints their last lines
#
# Needs the GPU setup of bench/gpu_e2e_setup.sh (nvdiffrast, the walk kernel). Results: DIR/oracle.json,
# DIR/prior.json, DIR/texture.json (copy them to bench/results/evidence_*.json), logs DIR/*.log, the priors'
# weights in DIR/prior and DIR/texture_prior.pt.
set -u
what="${1:?start|wait}" dir="${2:?result folder}"
mkdir -p "$dir"
case "$what" in
  start)
    setsid nohup bash -c "python bench/evidence_oracle_sculpt.py --device cuda --grid 256 --resolution 512 --out '$dir/oracle.json' > '$dir/oracle.log' 2>&1; echo \$? > '$dir/oracle.rc'" > /dev/null 2>&1 &
    setsid nohup bash -c "python bench/evidence_trained_prior.py --device cuda --out '$dir/prior' --result '$dir/prior.json' > '$dir/prior.log' 2>&1; echo \$? > '$dir/prior.rc'" > /dev/null 2>&1 &
    setsid nohup bash -c "python bench/evidence_trained_texture.py --device cuda --save-prior '$dir/texture_prior.pt' --out '$dir/texture.json' > '$dir/texture.log' 2>&1; echo \$? > '$dir/texture.rc'" > /dev/null 2>&1 &
    echo "started: logs in $dir"
    ;;
  wait)
    limit="${3:-560}" t=0
    while [ $t -lt "$limit" ] && ! { [ -f "$dir/oracle.rc" ] && [ -f "$dir/prior.rc" ] && [ -f "$dir/texture.rc" ]; }; do sleep 5; t=$((t + 5)); done
    for k in oracle prior texture; do
      echo "== $k rc=$(cat "$dir/$k.rc" 2>/dev/null || echo running)"; tail -3 "$dir/$k.log" 2>/dev/null
    done
    ;;
  *) echo "usage: $0 start|wait DIR [seconds]" >&2; exit 2 ;;
esac
