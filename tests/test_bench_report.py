"""The benchmark harness's stage table (bench/_projection.py, bench/run_all.py) and FLOP counts
(bench/bench_flops.py): known numbers in, known table out; FLOPs of layers with textbook counts; the
call structure of the real step code against the method's CFG batches and ComfyUI's own schedules."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import _projection as proj  # noqa: E402

WORKFLOW = os.path.join(ROOT, "workflows", "api", "full.json")
#: the paper's schedule (one view per ISD step): the known-number tests below are written for it
PAPER_WORKFLOW = os.path.join(ROOT, "workflows", "api", "full_paper.json")


def test_default_counts_are_the_shipped_schedules_step_counts() -> None:
    # full.json, the fast schedule: 500 + 500 inversion, 874 sculpt steps (250 GAN views, then reference / ISD
    # alternating, 4 views per ISD step), 15 inpainted views, 400 refine steps, two reference KSamplers
    counts = proj.default_counts(proj.workflow_settings(WORKFLOW))
    assert counts == {"panohead_w": 500, "panohead_pti": 500, "reference_geometry": 2, "stage_a": 250, "reference": 312,
                      "isd": 312, "isd_views": 4, "inpaint_views": 15, "refine_random": 200, "refine_reference": 200}
    # full_paper.json, the paper's: 6000 sculpt steps (1000 GAN views), one view per ISD step
    paper = proj.default_counts(proj.workflow_settings(os.path.join(ROOT, "workflows", "api", "full_paper.json")))
    assert paper == {"panohead_w": 500, "panohead_pti": 500, "reference_geometry": 2, "stage_a": 1000, "reference": 2500,
                     "isd": 2500, "isd_views": 1, "inpaint_views": 15, "refine_random": 200, "refine_reference": 200}


def test_odd_step_counts_follow_the_schedules() -> None:
    s = proj.workflow_settings(WORKFLOW)
    s["sculpt"] = dict(s["sculpt"], steps=1005, gan_steps=1000)  # stage B: b = 0..4, ISD on odd b
    s["refine"] = dict(s["refine"], refine_steps=5)  # random on even steps
    s["inpaint"] = dict(s["inpaint"], view_plan="0,0; 10,90\n-15,180")
    c = proj.default_counts(s)
    assert (c["reference"], c["isd"], c["refine_random"], c["refine_reference"], c["inpaint_views"]) == (3, 2, 3, 2, 3)


def _results() -> dict:
    return {
        "panohead": {"steps_neural128": {"w_step": {"ms_median": 100.0, "peak_gib": 2.0}, "pti_step": {"ms_median": 120.0}},
                     "steps_neural128_graph": {"w_step": {"ms_median": 50.0}}},  # graph row wins for W+, PTI has none
        "sculpt": {"configs": [{"grid_resolution": 128, "stage_a_step_ms": {"median_ms": 999.0}},
                               {"grid_resolution": 256, "sdf_init_s": 2.0, "stage_a_step_ms": {"median_ms": 20.0},
                                "reference_step_ms": {"median_ms": 30.0}, "guidance_render_step_ms": {"median_ms": 10.0}}]},
        "isd": {"isd_step": {"1view": {"median_ms": 90.0}, "1view_graphs": {"median_ms": 40.0, "peak_mem_mib": 3000.0}}},
        "texture": {"unwrap": {"seconds": 3.0}, "inpaint_full_graphs": {"seconds_per_view": 0.5},
                    "refine": {"random_step": {"median_ms": 900.0}, "reference_step": {"median_ms": 8.0}},
                    "refine_graphs": {"random_step": {"median_ms": 500.0}}},
        "flops": {"step_gflop": {"panohead_w_step_neural128": 1000.0, "isd_step_1view": 4000.0, "inpaint_view": 40000.0,
                                 "refine_random_step": 40000.0, "refine_reference_step": 0.0, "reference_geometry_sample": 60000.0}},
    }


def test_step_rows_known_numbers() -> None:
    counts = proj.default_counts(proj.workflow_settings(PAPER_WORKFLOW))
    rates = proj.card_rates({"device": "card", "matmul_tflops": {"bf16": 800.0, "fp16": 790.0, "tf32": 400.0}}, None, "")
    assert (rates["half"], rates["fp32"]) == (800.0, 400.0)
    server = {"DMTet Sculpt": {"seconds": 300.0, "peak_mib": 4000.0,
                               "step_ms": {"gan": {"median_ms": 25.0}, "reference": {"median_ms": 35.0}, "guidance": {"median_ms": 70.0}}}}
    rows = {r.step: r for r in proj.step_rows(_results(), counts, rates, server=server)}
    w = rows["W+ step"]
    assert (w.ms, w.count, w.seconds) == (50.0, 500, 25.0) and "steps_neural128_graph" in w.source
    assert w.floor_ms == pytest.approx(1000.0 / 400.0) and w.ratio == pytest.approx(50.0 / 2.5)  # fp32 work: TF32 rate
    assert w.peak_mib is None  # the graph row carries no peak, the eager row's is not mixed in
    assert rows["PTI step"].ms == 120.0 and rows["PTI step"].floor_ms is None  # no FLOPs given for PTI
    assert rows["SDF init"].ms == 2000.0 and rows["SDF init"].seconds == 2.0
    assert rows["stage-A step"].ms == 20.0 and rows["stage-A step"].server_ms == 25.0  # grid 256, not the 128 row
    isd = rows["ISD step (1 view)"]
    assert isd.ms == 50.0 and isd.seconds == 125.0  # graphed guidance 40 + the sculpt's render part 10
    assert isd.floor_ms == pytest.approx(5.0) and isd.ratio == pytest.approx(70.0 / 5.0)  # the server's whole-step median
    assert rows["inpainted view (whole run / views)"].seconds == pytest.approx(7.5)
    assert rows["random-view step (SDEdit)"].ms == 500.0 and rows["random-view step (SDEdit)"].ratio == pytest.approx(10.0)
    assert rows["reference-view step"].ms == 8.0 and rows["reference-view step"].ratio is None  # floor 0: no ratio
    assert rows["KSampler run (normal, depth)"].ms is None and rows["KSampler run (normal, depth)"].floor_s == pytest.approx(0.15)

    text = proj.render_tables(list(rows.values()), rates, server, card="card")
    stage_line = next(line for line in text.splitlines() if line.startswith("| DMTet Sculpt | 2"))
    # projected: SDF 2 + 1000·20 ms + 2500·30 ms + 2500·50 ms = 222 s; server 300 s; floor 2500·5 ms = 12.5 s
    assert stage_line == "| DMTet Sculpt | 222 | 300 | 12.5 | 4,000 |"
    assert "Missing in the projection" in text and "mesh 512³" in text


def test_card_rate_fallback_and_absence() -> None:
    assert proj.card_rates(None, 700.0, "ENVIRONMENT.md") == {"half": 700.0, "fp32": 700.0, "source": "ENVIRONMENT.md"}
    none = proj.card_rates({"matmul_tflops": {}}, None, "")
    assert none["half"] is None
    counts = proj.default_counts(proj.workflow_settings(WORKFLOW))
    assert all(r.floor_ms is None for r in proj.step_rows(_results(), counts, none))


def test_replace_block() -> None:
    doc = "# Perf\n\nintro\n"
    once = proj.replace_block(doc, "table 1")
    assert once.startswith(doc.rstrip("\n")) and "table 1" in once
    twice = proj.replace_block(once + "\nafter\n", "table 2")
    assert "table 1" not in twice and "table 2" in twice and twice.endswith("\nafter\n") and twice.count(proj.MARK_BEGIN) == 1


def _run_all(argv: list[str]) -> None:
    import run_all

    old = sys.argv
    sys.argv = ["run_all.py", *argv]
    try:
        run_all.main()
    finally:
        sys.argv = old


def test_run_all_renders_the_table_from_one_file_per_stage(tmp_path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    for stage, data in _results().items():
        (out / f"{stage}.json").write_text(json.dumps(dict(data, device="Test Card", measured={"date": "2026-01-02", "commit": "abc1234"})))
    (out / "card.json").write_text(json.dumps({"device": "Test Card", "matmul_tflops": {"bf16": 500.0, "tf32": 250.0},
                                               "source": "a known rate"}))
    # the server run's stage records are found in the results folder by their fixed name
    (out / "pipeline_default.stages.jsonl").write_text(json.dumps({"stage": "DMTet Sculpt", "seconds": 300.0, "peak_mib": 4000.0}) + "\n")
    perf = tmp_path / "PERFORMANCE.md"
    perf.write_text("# Performance\n\n" + proj.MARK_BEGIN + "\nold\n" + proj.MARK_END + "\n\n## Later\n")
    _run_all(["--report-only", "--out-dir", str(out), "--performance", str(perf), "--stages", "card,panohead,sculpt,isd,texture,flops",
              "--workflow", PAPER_WORKFLOW])
    doc = perf.read_text()
    assert "old" not in doc and doc.endswith("## Later\n") and "Card: Test Card" in doc
    assert "| DMTet Sculpt | ISD step (1 view) | 2,500 | 50.0 |" in doc  # graphed 40 + the sculpt's render part 10
    assert "Floors at 500 TFLOP/s (half precision) and 250 TFLOP/s" in doc and "rates: a known rate" in doc
    assert "isd.json (2026-01-02, abc1234)" in doc
    assert "| DMTet Sculpt | 222 | 300 |" in doc  # SDF 2 + 1000·20 + 2500·30 + 2500·50 ms beside the server's 300 s
    assert "pipeline_default.stages.jsonl" in doc


def test_run_all_overwrites_a_stage_only_when_it_succeeds(tmp_path, monkeypatch) -> None:
    import run_all

    scripts, out = tmp_path / "bench", tmp_path / "results"
    scripts.mkdir()
    out.mkdir()
    (scripts / "bench_ok.py").write_text("import json, sys\njson.dump({'stage': 'ok', 'ms': 2.0}, open(sys.argv[2], 'w'))\n")
    (scripts / "bench_boom.py").write_text("import sys\nprint('no GPU')\nsys.exit(3)\n")
    for stage in ("ok", "boom"):
        (out / f"{stage}.json").write_text(json.dumps({"stage": stage, "ms": 1.0}))
    monkeypatch.setattr(run_all, "HERE", str(scripts))
    ok = run_all.run_stage("ok", str(out), [], timeout=60)
    assert json.loads((out / "ok.json").read_text()) == ok and ok["ms"] == 2.0 and set(ok["measured"]) == {"date", "commit", "note"}
    boom = run_all.run_stage("boom", str(out), [], timeout=60)
    assert boom["error"] == "exit 3" and "no GPU" in boom["log_tail"]
    assert json.loads((out / "boom.json").read_text()) == {"stage": "boom", "ms": 1.0}  # the previous result stays
    assert sorted(p.name for p in out.iterdir()) == ["boom.json", "ok.json"]  # no scratch file left behind
    results, sources = run_all.load_results(["ok", "card"], str(out))
    assert results["card"] == {"error": "no result file"} and list(sources) == ["ok"] and sources["ok"].startswith("ok.json (")


# ---------------------------------------------------------------------------------- FLOP counting
def test_flop_counts_of_layers_with_textbook_counts() -> None:
    import bench_flops

    conv = torch.nn.Conv2d(3, 8, 3, padding=1).requires_grad_(False)
    x = torch.zeros(2, 3, 16, 16)
    fwd = 2 * 8 * 3 * 9 * 16 * 16  # 2 FLOPs per multiply-add, per output pixel and channel
    assert bench_flops.per_sample(conv, x) == fwd
    # frozen weights: the backward computes the input gradient only, as many FLOPs as the forward
    assert bench_flops.per_sample(conv, x, grad=True) == 2 * fwd
    lin = torch.nn.Linear(64, 32)  # trainable weights: the backward adds the weight gradient
    assert bench_flops.per_sample(lin, torch.zeros(4, 64), grad=True) == 3 * (2 * 64 * 32)


def test_sample_log_counts_batches_and_restores() -> None:
    import bench_flops

    net = torch.nn.Linear(4, 4)
    log = bench_flops.SampleLog()
    with log.watch([(net, "forward", "net")]):
        net(torch.zeros(3, 4))
        net(torch.zeros(2, 4, requires_grad=True))
        with torch.no_grad():
            net(torch.zeros(5, 4, requires_grad=True))
    assert log.take() == {"net": 8, "net+grad": 2}
    assert "forward" not in vars(net)  # the instance attribute is gone: the class method is back
    net(torch.zeros(1, 4))
    assert log.take() == {}
    with pytest.raises(KeyError, match="no per-sample FLOPs"):
        bench_flops.step_flops({"step": {"net": 1, "other": 2}}, {"net": 10})
    assert bench_flops.step_flops({"step": {"net": 3}}, {"net": 10}) == {"step": 30}


@pytest.mark.comfy
def test_call_structure_follows_the_step_code_and_comfy_schedules() -> None:
    """Samples per step recorded from the real step code with tiny models: CFG doubles every UNet and
    ControlNet batch, the samplers run ComfyUI's own schedule lengths (ddim_uniform at 30 steps runs 31
    model calls: its sigma table), the ISD encodes with a gradient and the refine targets without."""
    from tiny_models import import_comfy

    import_comfy()
    import bench_flops
    import comfy.samplers
    from tiny_models import tiny_sd15_model

    settings = proj.workflow_settings(WORKFLOW)
    calls = bench_flops.call_structure(settings)
    ms = tiny_sd15_model().get_model_object("model_sampling")

    def model_calls(s: dict) -> int:
        """Model calls of one KSampler run: ComfyUI's sigma table (a denoise below 1 keeps the last
        ``steps`` intervals of a ``steps / denoise`` schedule)."""
        steps, denoise = int(s["steps"]), float(s.get("denoise", 1.0))
        if denoise > 0.9999:
            return len(comfy.samplers.calculate_sigmas(ms, s["scheduler"], steps)) - 1
        return len(comfy.samplers.calculate_sigmas(ms, s["scheduler"], int(steps / denoise))[-(steps + 1):]) - 1

    assert calls["isd_step_1view"] == {"unet": 2, "controlnet": 2, "vae_encoder+grad": 1}
    assert calls["isd_step_4view"] == {"unet": 8, "controlnet": 8, "vae_encoder+grad": 4}
    k = model_calls(settings["inpaint"])
    assert k == 20 and calls["inpaint_view"] == {"unet": 2 * k, "controlnet": 2 * k, "vae_encoder": 1, "vae_decoder": 1}
    from idsculpt.core.schedules import FAST

    k = int(settings["refine"]["steps"])  # the SDEdit's DDIM steps run whole over [0, t]: one call each
    assert k == FAST.refine_sampler_steps and calls["refine_random_step"] == {
        "unet": 2 * k, "controlnet": 2 * k, "vae_encoder": 1, "vae_decoder": 1, "vgg_taps+grad": 1, "vgg_taps": 1}
    assert calls["refine_reference_step"] == {}
    k = model_calls(settings["reference_geometry"])
    assert k == 31 and calls["reference_geometry_sample"] == {"unet": 2 * k, "controlnet": 2 * k, "vae_decoder": 1}


@pytest.mark.comfy
def test_full_size_network_flops_match_the_published_sd15_counts() -> None:
    """Per-sample FLOPs of the full-size networks (fake tensors: no arithmetic runs) against counts
    measured independently with diffusers' SD1.5 (docs ENVIRONMENT.md: UNet 804 G, ControlNet 283 G,
    VAE encoder 1,117 G, decoder 2,515 G at 512²)."""
    from tiny_models import import_comfy

    import_comfy()
    import bench_flops

    per = bench_flops.network_flops(full=True, res=512)
    for key, ref in (("unet", 804e9), ("controlnet", 283e9), ("vae_encoder", 1117e9), ("vae_decoder", 2515e9)):
        assert per[key] == pytest.approx(ref, rel=0.005), key
    # the ISD's encoder backward takes the input gradient only (frozen weights): about one more forward
    assert 1.95 < per["vae_encoder+grad"] / per["vae_encoder"] < 2.1
    assert per["vgg_taps+grad"] == 2 * per["vgg_taps"]


def test_a_result_is_stamped_with_the_commit_the_device_command_names(monkeypatch) -> None:
    """bench/_stamp.py: IDSCULPT_COMMIT (set by the device command: the GPU machine's copy of .git can be older than
    its files) wins over the checkout's HEAD, which is the fallback."""
    import _stamp

    monkeypatch.setenv("IDSCULPT_COMMIT", "799ac63")
    assert _stamp.measured("note")["commit"] == "799ac63" and _stamp.measured("note")["note"] == "note"
    monkeypatch.delenv("IDSCULPT_COMMIT")
    head = _stamp.commit()
    assert head != "799ac63" and (head == "unknown" or len(head) >= 7)
