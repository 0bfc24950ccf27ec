#!/usr/bin/env bash
# Issue 22's evidence at the shipped step counts on the GPU machine: the oracle guidance
# (bench/evidence_oracle_sculpt.py, grid 256, 512 px), the small trained prior of the sculpt
# (bench/evidence_trained_prior.py) and the trained texture prior of refinement's sampler steps
# (bench/evidence_trained_texture.py). The two sculpt pieces are launch-bound and small and share the GPU as
# processes; the texture piece runs after them, alone (H100, 2026-12-06: 347 s, its prior's training holding
# 68 GiB; the oracle's paper run took 335 s). About 12 min in all, estimated.
#
#   bash bench/gpu_evidence.sh start DIR [PIECE ...]  # detached (setsid nohup): survives the device call
#   bash bench/gpu_evidence.sh wait DIR S             # wait up to S seconds for them; prints their last lines
# PIECE: oracle | prior | texture (default: all three).
#
# Needs the GPU setup of bench/gpu_e2e_setup.sh (nvdiffrast, the walk kernel). Results: DIR/oracle.json,
# DIR/prior.json, DIR/texture.json (copy them to bench/results/evidence_*.json), logs DIR/*.log, the priors'
# weights in DIR/prior and DIR/texture_prior.pt.
set -u
what="${1:?start|wait}" dir="${2:?result folder}"
mkdir -p "$dir"
case "$what" in
  start)
    # the two sculpt pieces side by side (small, launch-bound), then the texture piece alone: its prior's training
    # held 68 GiB of an H100 on 2026-12-06, and the sculpt pieces beside it ran out of memory
    shift 2
    pieces="${*:-oracle prior texture}"
    for k in $pieces; do
      case "$k" in oracle|prior|texture) ;; *) echo "unknown piece: $k (oracle | prior | texture)" >&2; exit 2 ;; esac
    done
    echo "$pieces" > "$dir/pieces"
    run() { case " $pieces " in *" $1 "*) echo "$2";; *) echo ":";; esac; }
    oracle=$(run oracle "python bench/evidence_oracle_sculpt.py --device cuda --grid 256 --resolution 512 --out '$dir/oracle.json' > '$dir/oracle.log' 2>&1; echo \$? > '$dir/oracle.rc'")
    prior=$(run prior "python bench/evidence_trained_prior.py --device cuda --out '$dir/prior' --result '$dir/prior.json' > '$dir/prior.log' 2>&1; echo \$? > '$dir/prior.rc'")
    texture=$(run texture "python bench/evidence_trained_texture.py --device cuda --save-prior '$dir/texture_prior.pt' --out '$dir/texture.json' > '$dir/texture.log' 2>&1; echo \$? > '$dir/texture.rc'")
    setsid nohup bash -c "($oracle) & ($prior) & wait; $texture" > /dev/null 2>&1 &
    echo "started ($pieces): logs in $dir"
    ;;
  wait)
    limit="${3:-560}" t=0
    pieces=$(cat "$dir/pieces" 2>/dev/null || echo "oracle prior texture")
    finished() { for k in $pieces; do [ -f "$dir/$k.rc" ] || return 1; done; }
    while [ $t -lt "$limit" ] && ! finished; do sleep 5; t=$((t + 5)); done
    for k in $pieces; do
      echo "== $k rc=$(cat "$dir/$k.rc" 2>/dev/null || echo running)"; tail -3 "$dir/$k.log" 2>/dev/null
    done
    ;;
  *) echo "usage: $0 start DIR [oracle|prior|texture ...] | wait DIR [seconds]" >&2; exit 2 ;;
esac
