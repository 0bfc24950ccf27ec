# Before/after of the graph signature's weights key (issue "Speed and memory"): bench_isd.py twice in one
# process on the GPU, first with the old per-call walk over .parameters() swapped in, then the current
# cached-dict key. Results: $OUT/wk_before.json, $OUT/wk_after.json (the "after" run is bench/results/isd.json's graphed rows). A one-off: the old key is gone from the code.
source bench/gpu_env.sh >/dev/null 2>&1
python - <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
import bench_isd
from idsculpt.core.speed.cuda_graph import GraphedCall
new = GraphedCall._weights_key
def old(self):
    ptrs = []
    for m in self.modules:
        ptrs.extend(p.data_ptr() for p in m.parameters())
        ptrs.extend(b.data_ptr() for b in m.buffers())
    return tuple(ptrs)
out = os.environ["OUT"]
for name, fn in (("before", old), ("after", new)):
    GraphedCall._weights_key = fn
    sys.argv = ["bench_isd.py", "--cuda-graphs", "on", "--iters", "30", "--out", f"{out}/wk_{name}.json"]
    bench_isd.main()
for name in ("before", "after"):
    r = json.load(open(f"{out}/wk_{name}.json"))
    print(name, {k: (v["median_ms"], v["min_ms"]) for k, v in r["predictor_only"].items()},
          {k: v["median_ms"] for k, v in r["isd_step"].items()})
PY
