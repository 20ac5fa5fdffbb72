"""smoke tests of bench.py: the --quick run end to end, and that the timed steps compute the losses of
rddpo.py on the data they are given (run: python -m pytest -q test_bench.py)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import json
import math

import numpy as np
import pytest
import torch

import bench
import rddpo
from harness import experiment


def test_quick_run_writes_every_variant_with_finite_times_and_ratios(tmp_path):
    """--quick in-process: every variant is in the JSON with --steps positive times; DPO is 1x DPO, bare is
    1x bare; the one-off pass took time; only the policy's parameters were alive while the steps ran."""
    returned = bench.run(bench.parse_args(["--quick", "--out", str(tmp_path)]))
    result = json.loads((tmp_path / "bench-001" / "bench.json").read_text())
    assert result["cases"] and len(result["cases"]) == len(returned["cases"])
    for case in result["cases"]:
        assert list(case["variants"]) == list(bench.VARIANTS)
        for name, v in case["variants"].items():
            assert len(v["times_ms"]) == bench.QUICK["steps"]
            for key in ("median_ms", "iqr_ms", "ratio_to_dpo", "ratio_to_bare", "loss_us", "peak_mib"):
                assert math.isfinite(v[key]) and v[key] >= 0, (name, key, v[key])
            assert v["median_ms"] > 0 and v["ratio_to_dpo"] > 0 and v["ratio_to_bare"] > 0 and v["loss_us"] > 0
            low, high = v["ratio_to_dpo_quartiles"]
            assert low <= v["ratio_to_dpo"] <= high
            assert v["peak_mib"] >= case["memory"]["state_mib"] > 0  # the peak holds at least the state
        assert case["variants"]["dpo"]["ratio_to_dpo"] == 1.0
        assert case["variants"]["bare"]["ratio_to_bare"] == 1.0
        assert case["one_off"]["reference_ms"] > 0 and case["one_off"]["total_ms_K16"] > case["one_off"]["total_ms_K4"]
        assert case["memory"]["live_parameters"] == case["memory"]["policy_parameters"] > 0
        assert len(case["targets"]) == 8 and all(isinstance(t["met"], bool) for t in case["targets"].values())
    assert result["machine"]["torch"] == torch.__version__


@pytest.fixture(scope="module")
def prepared():
    args, threads = bench.parse_args(["--quick"]), torch.get_num_threads()
    torch.set_num_threads(args.threads)  # as the --quick run does: fast on a busy machine too
    policy, opt, data, _, steps, _ = bench.prepare("tiny", torch.device("cpu"), "float32", args,
                                                np.random.default_rng(0))
    policy.eval()  # no dropout, so a second forward pass sees the same function
    yield args, policy, data, steps
    torch.set_num_threads(threads)


def direct_losses(policy, data, rows, cfg, m=None):
    """the losses computed here from rddpo's loss functions, without bench.py's step; m: pool rows (default B)."""
    ids, mask, resp = rddpo.batch_tensors(data.tokens, rows, "cpu")
    with torch.no_grad():
        logps = rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp)  # (2B,)
    pc, pr = logps.chunk(2)
    rc, rr = data.ref_logps[rows].chunk(2)
    fam_c, fam_r = data.rm_family[:, rows].chunk(2, dim=1)  # (16, B) each
    pool_rows = rows[:m or len(rows) // 2]  # the step's pool responses: the pool's rows of the batch's (first m) pairs
    ids, mask, resp = rddpo.batch_tensors(data.pool, pool_rows, "cpu")
    with torch.no_grad():
        pool = (rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp), data.pool_ref_logps[pool_rows])
    e16 = rddpo.pessimistic_distill_loss(pc, pr, rc, rr, fam_c, fam_r, cfg.beta, cfg.gamma, *pool)
    e4 = rddpo.pessimistic_distill_loss(pc, pr, rc, rr, fam_c[:4], fam_r[:4], cfg.beta, cfg.gamma, *pool)
    p = rddpo.pessimistic_dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.gamma, *pool)
    return dict(bare=logps.sum(), dpo=rddpo.dpo_loss(pc, pr, rc, rr, cfg.beta), e16=e16, e4=e4, p=p)


def test_timed_steps_compute_rddpo_losses_and_step_the_policy(prepared):
    """the e-DPO step at K=16 returns min over all 16 members (checked against a direct call of
    rddpo.pessimistic_distill_loss, its forward-KL term on the pool's responses), the K=4 step min over the first
    four, which differs here; p-DPO, DPO and the bare floor (sum of the sequence log-probs) match too; and each step
    moves the policy's weights."""
    args, policy, data, steps = prepared
    cfg, n = experiment.Config(), len(data.keep)
    assert data.rm_family.shape == (16, 2 * n)
    rows = np.concatenate([np.arange(args.batch_size), np.arange(args.batch_size) + n])
    with torch.no_grad():  # move the policy off the reference, so that h and the pool's kl term are not 0
        policy.transformer.h[0].mlp.c_fc.weight.mul_(1.5)
    start = copy.deepcopy(policy.state_dict())
    ids, mask, resp = rddpo.batch_tensors(data.tokens, rows, "cpu")
    with torch.no_grad():
        h = rddpo.logratio_margin(*rddpo.sequence_logps(rddpo.forward(policy, ids, mask), ids, resp).chunk(2),
                                  *data.ref_logps[rows].chunk(2))  # (B,)
    data.rm_family[10, rows] = torch.cat([cfg.beta * h, torch.zeros_like(h)])  # member 10 asks for the margin the
    direct = direct_losses(policy, data, rows, cfg)  # policy has: loss 0, the smallest, beyond the first four
    assert not torch.allclose(direct["e16"], direct["e4"])  # so the check below can tell K=16 from K=4
    assert direct["p"] != direct["dpo"]  # the pool's term is there
    for name, key in (("e-dpo K=16", "e16"), ("e-dpo K=4", "e4"), ("p-dpo", "p"), ("dpo", "dpo"), ("bare", "bare")):
        policy.load_state_dict(start)
        loss = steps[name](rows)
        torch.testing.assert_close(loss, direct[key], rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(policy.transformer.h[0].mlp.c_fc.weight, start["transformer.h.0.mlp.c_fc.weight"])
    for d in (2, 4):  # --pool-batch B/d: the forward-KL term on the first B/d pool rows only
        policy.load_state_dict(start)
        fewer = direct_losses(policy, data, rows, cfg, m=args.batch_size // d)
        assert fewer["p"] != direct["p"]
        for name, key in ((f"e-dpo K=4 M=B/{d}", "e4"), (f"p-dpo M=B/{d}", "p")):
            policy.load_state_dict(start)
            torch.testing.assert_close(steps[name](rows), fewer[key], rtol=1e-5, atol=1e-6, msg=name)


def test_targets_report_a_miss():
    """IPO at 1.2x DPO, p-DPO (the pool) at 1.7x, e-DPO at K=16 1.9x against 1.0x at K=4 (and 1.9/1.7 = 1.12x
    p-DPO), DPO at 1.2x bare and a second model alive: all six missed (the pool's rows at M = B/2 and B/4, at 1.0x,
    met, until p-DPO at M = B/4 takes 1.3x); the loss-alone estimate adds the losses' own time difference to the
    base's step: 1 + 500 us / 10 ms."""
    v = {n: dict(median_ms=10.0, ratio_to_dpo=1.0, ratio_to_bare=1.0, loss_us=100.0) for n in bench.VARIANTS}
    v["ipo"]["ratio_to_dpo"], v["dpo"]["ratio_to_bare"], v["e-dpo K=16"]["ratio_to_dpo"] = 1.2, 1.2, 1.9
    v["p-dpo"]["ratio_to_dpo"], v["ipo"]["loss_us"] = 1.7, 600.0
    result = bench.targets(dict(variants=v, memory=dict(live_parameters=200, policy_parameters=100)))
    assert [t["met"] for t in result.values()] == [False] * 5 + [True] * 2 + [False]  # the pool's rows at 1.0x
    assert result["IPO's and d-DPO's steps within 1.05x DPO's"]["from_loss_alone"] == pytest.approx(1.05)
    v["ipo"]["ratio_to_dpo"], v["dpo"]["ratio_to_bare"], v["p-dpo"]["ratio_to_dpo"] = 1.04, 1.09, 1.5
    v["e-dpo K=4"]["ratio_to_dpo"], v["e-dpo K=16"]["ratio_to_dpo"] = 1.5, 1.5 * 1.04
    result = bench.targets(dict(variants=v, memory=dict(live_parameters=100, policy_parameters=100)))
    assert [t["met"] for t in result.values()] == [True] * 8
    v["p-dpo M=B/4"]["ratio_to_dpo"] = 1.3  # M = B/4 misses 1.25x when either pooled step does
    result = bench.targets(dict(variants=v, memory=dict(live_parameters=100, policy_parameters=100)))
    assert [name for name, t in result.items() if not t["met"]] == [
        "the pool at M=B/4: e-DPO's and p-DPO's steps within 1.25x DPO's"]


def test_quick_sets_defaults_only_and_a_given_flag_wins():
    """--quick --steps 7: the preset's other values, but 7 steps."""
    args = bench.parse_args(["--quick", "--steps", "7"])
    assert args.steps == 7 and args.warmup == bench.QUICK["warmup"] and args.sizes == bench.QUICK["sizes"]
    assert bench.parse_args(["--quick"]).steps == bench.QUICK["steps"]


@pytest.mark.parametrize("argv, says", [
    (["--seeds", "1", "1"], "duplicate"),
    (["--sizes", "huge"], "unknown size"),
    (["--device", "tpu"], "invalid choice"),
    (["--threads", "-1"], "--threads >= 0"),
    (["--seeds", "-2"], "--seeds must be >= 0"),
])
def test_bad_flags_are_one_error_line_and_exit_2_before_any_folder_is_made(tmp_path, capsys, argv, says):
    try:
        status = bench.main([*argv, "--quick", "--out", str(tmp_path / "out")])
    except SystemExit as e:  # argparse's own errors exit from parse_args
        status = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_second_run_into_the_same_out_gets_a_new_folder(tmp_path, monkeypatch):
    """bench-001 holds an earlier result: the next run writes bench-002 and leaves bench-001 as it was."""
    (tmp_path / "bench-001").mkdir()
    (tmp_path / "bench-001" / "bench.json").write_text("earlier")
    monkeypatch.setattr(bench, "run_case", lambda *a: {"size": "fake"})
    monkeypatch.setattr(bench, "print_case", lambda res: None)
    bench.run(bench.parse_args(["--quick", "--out", str(tmp_path)]))
    assert (tmp_path / "bench-001" / "bench.json").read_text() == "earlier"
    assert json.loads((tmp_path / "bench-002" / "bench.json").read_text())["cases"] == [{"size": "fake"}]


def test_out_naming_a_file_is_one_error_line_and_the_file_is_unchanged(tmp_path, capsys):
    (tmp_path / "bench.json").write_text("earlier")
    assert bench.main(["--quick", "--out", str(tmp_path / "bench.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0], err
    assert (tmp_path / "bench.json").read_text() == "earlier"


def test_ctrl_c_keeps_the_finished_cases_and_says_where(tmp_path, monkeypatch, capsys):
    """two seeds, ctrl-c during the second case: exit 130, one line naming bench.json, which holds the first."""
    calls = []
    def fake_case(size, device, dtype, seed, args):
        calls.append(seed)
        if seed == 1:
            raise KeyboardInterrupt
        return {"size": size, "seed": seed}
    monkeypatch.setattr(bench, "run_case", fake_case)
    monkeypatch.setattr(bench, "print_case", lambda res: None)
    assert bench.main(["--quick", "--seeds", "0", "1", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    path = tmp_path / "bench-001" / "bench.json"
    assert calls == [0, 1] and len(err) == 1 and "interrupted" in err[0] and str(path) in err[0], err
    assert json.loads(path.read_text())["cases"] == [{"size": "tiny", "seed": 0}]


@pytest.mark.slow
def test_trl_timing_writes_the_three_steps_and_their_ratios(tmp_path):
    """--trl --quick: TRL's dpo step, rddpo_trl's e-dpo step and rddpo.py's, each a positive median, and the ratios
    are the quotients of those medians."""
    out = bench.run(bench.parse_args(["--quick", "--trl", "--steps", "4", "--out", str(tmp_path)]))
    t = out["trl"]
    assert min(t["trl_dpo_ms"], t["trl_edpo_ms"], t["rddpo_edpo_ms"]) > 0
    assert t["edpo_over_dpo"] == pytest.approx(t["trl_edpo_ms"] / t["trl_dpo_ms"])
    assert t["trl_over_rddpo"] == pytest.approx(t["trl_edpo_ms"] / t["rddpo_edpo_ms"])


def gpu_script(out, **env):
    """bash tools/gpu.sh OUT on the cpu, its parts shrunk through the environment -> the finished process."""
    import subprocess
    env = dict(dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", RDDPO_DEVICE="cpu", OMP_NUM_THREADS="1",
                    RDDPO_BENCH="--quick --device cpu --steps 4 --warmup 0 --pairs 8"), **env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["bash", os.path.join(root, "tools", "gpu.sh"), str(out)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [line.split(" at ")[0] for line in proc.stdout.splitlines() if line.startswith("gpu.sh:")][1:] == [
        "gpu.sh: reference ready", "gpu.sh: headline done", "gpu.sh: all done"]
    assert os.path.exists(out / "bench-001" / "bench.json") == (env["RDDPO_BENCH"] != "skip")
    return proc


def bias_runs(out, n_bias):
    """the run folders of the biases (after the reference's own run-001), each one's results; one reference."""
    assert len([p for p in os.listdir(out) if p.startswith("reference-")]) == 1, os.listdir(out)
    runs = sorted(p for p in os.listdir(out) if p.startswith("run-"))
    assert len(runs) == 1 + n_bias
    return [json.loads((out / run / "results.json").read_text()) for run in runs[1:]]


@pytest.mark.slow
def test_gpu_script_runs_each_part_on_the_cpu_at_a_tiny_budget(tmp_path):
    """tools/gpu.sh with RDDPO_MODEL=tiny (gpt-2-small's shape built in code, here shrunk to 1 layer) and its parts
    shrunk (2 steps, two biases, one seed, bench --quick) on the cpu: it says which model it runs and why, exits
    0, builds the reference once, runs each bias as its own run with every method, prints each run's table and
    writes the bench folder."""
    proc = gpu_script(tmp_path, RDDPO_MODEL="tiny", RDDPO_SEEDS="0", RDDPO_BIASES="0 1",
                      RDDPO_SHAPE="--n-layer 1 --n-embd 32 --n-head 2",
                      RDDPO_BUDGET="--quick --sft-steps 10 --steps 2 --rm-steps 2 --n-pairs 16 --n-eval 8 "
                                   "--eval-points 1 --max-new-tokens 12")
    assert proc.stdout.startswith("gpu.sh: runs the headline on gpt-2-small's shape, built in code (RDDPO_MODEL=tiny)")
    assert proc.stdout.count("=== bias") == 2 and proc.stdout.count(" bias method ") >= 2
    results = bias_runs(tmp_path, 2)
    for r in results:
        assert sorted({(x["method"], x["seed"]) for x in r["runs"]}) == sorted(
            (m, 0) for m in ("dpo", "d-dpo", "e-dpo", "p-dpo"))
        assert r["config"]["n_layer"] == 1 and r["config"]["device"] == "cpu" and r["config"]["model"] == "tiny"
    assert sorted(r["config"]["bias"] for r in results) == [0, 1]


@pytest.mark.slow
def test_gpu_script_runs_the_pretrained_protocol_on_a_model_folder(tmp_path):
    """tools/gpu.sh with RDDPO_MODEL a model folder (a small gpt-2 saved here, standing in for SmolLM2) at a tiny
    budget: the pretrained protocol's biases (0.5 and 0), methods (DPO, e-DPO, p-DPO) and reward-head rate, LoRA
    (a --model's default), one reference for both biases, and the first line names the model. bench.py, which the
    other test runs, is skipped (RDDPO_BENCH=skip)."""
    from harness import models
    from harness.task import build_tokenizer
    tokenizer, folder = build_tokenizer(), tmp_path / "model"
    torch.manual_seed(0)
    models.build_tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "gpu"
    proc = gpu_script(out, RDDPO_MODEL=str(folder), RDDPO_SEEDS="1", RDDPO_BENCH="skip",
                      RDDPO_BUDGET="--quick --sft-steps 2 --steps 2 --rm-steps 2 --n-pairs 8 --batch-size 4 "
                                   "--n-eval 4 --eval-points 1 --max-new-tokens 8")
    assert proc.stdout.startswith(f"gpu.sh: runs the pretrained protocol on {folder} (RDDPO_MODEL names it)")
    results = bias_runs(out, 2)
    for r in results:
        assert sorted({(x["method"], x["seed"]) for x in r["runs"]}) == [("dpo", 1), ("e-dpo", 1), ("p-dpo", 1)]
        assert r["config"]["model"] == str(folder) and r["config"]["rm_lr"] == 3e-3 and r["config"]["lora"] == 16
    assert sorted(r["config"]["bias"] for r in results) == [0, 0.5]


@pytest.mark.slow
def test_pool_noise_measures_each_m_at_pi_ref_and_the_trained_policies(tmp_path):
    """--pool-noise --quick: for pi_ref and the p-DPO and e-DPO policies, at M = 16, 8 and 4 pool rows, the
    forward-KL estimate's sd (0 at pi_ref, where every term is 0, up to float32 rounding), gradient noises that are positive and
    larger at M = 4 than at M = 16 (fewer rows, more noise), and rho their ratio; no timing cases run."""
    out = bench.run(bench.parse_args(["--pool-noise", "--quick", "--out", str(tmp_path)]))
    noise = out["pool_noise"]
    assert list(noise) == ["pi_ref (p-dpo's terms)", "p-dpo", "pi_ref (e-dpo's terms)", "e-dpo"] and out["cases"] == []
    for name, n in noise.items():
        assert list(n["rho"]) == [16, 8, 4] and n["preference_grad_noise"] > 0
        assert n["fkl_grad_noise"][4] > n["fkl_grad_noise"][16] > 0
        assert all(n["rho"][m] == pytest.approx(n["fkl_grad_noise"][m] / n["preference_grad_noise"]) for m in n["rho"])
        assert (max(n["fkl_sd"].values()) < 1e-4) == name.startswith("pi_ref")  # float32 rounding only
    saved = json.loads((tmp_path / "bench-001" / "bench.json").read_text())
    assert saved["pool_noise"]["p-dpo"]["rho"]["16"] == pytest.approx(noise["p-dpo"]["rho"][16])


TINY_RUN = ("--quick --methods dpo --seeds 0 --sft-steps 2 --steps 2 --batch-size 4 --rm-steps 2 --n-pairs 8 --n-eval 4 "
            "--eval-points 1 --max-new-tokens 8")


@pytest.mark.slow
def test_pretrained_runs_each_part_in_its_own_process_and_folder_and_reads_its_peak(tmp_path, monkeypatch, capsys):
    """--pretrained FOLDER, the parts shrunk to a tiny budget on a small gpt-2 saved here: a part (cell, by its
    time) is a whole rddpo.py run in its own folder (its reference fine-tuned there), with its seconds, its peak
    memory (a python process that imported torch holds more than 0.1 GB) and a target; a part that fails (quick,
    by its memory, on a model folder that is not there) is exit status 2, its target missed, and rddpo.py's own
    error line is printed."""
    from harness.task import build_tokenizer
    from harness import models
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    folder = str(tmp_path / "model")
    models.build_tiny_gpt2(tokenizer, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for part, big in bench.PRETRAINED.items():
        monkeypatch.setitem(bench.PRETRAINED, part, dict(big, flags=TINY_RUN))
    out = bench.run(bench.parse_args(["--pretrained", folder, "--parts", "cell", "--threads", "1", "--out",
                                      str(tmp_path / "b")]))
    saved = json.loads((tmp_path / "b" / "bench-001" / "bench.json").read_text())["pretrained"]
    assert list(saved) == ["cell"] and saved == json.loads(json.dumps(out["pretrained"]))
    for part, res in saved.items():
        assert res["exit_status"] == 0 and res["seconds"] > 0 and 0.1 < res["peak_gb"] < 20
        assert res["target"]["met"] == (res["peak_gb"] <= 3 if part == "quick" else res["seconds"] <= 1800)
        assert (tmp_path / "b" / "bench-001" / part / "run-001" / "results.json").exists()
        assert any(p.startswith("reference-") for p in os.listdir(tmp_path / "b" / "bench-001" / part))
    out = bench.run(bench.parse_args(["--pretrained", str(tmp_path / "absent"), "--parts", "quick", "--out",
                                      str(tmp_path / "b")]))
    assert out["pretrained"]["quick"]["exit_status"] == 2 and not out["pretrained"]["quick"]["target"]["met"]
    assert "quick: rddpo.py said: error:" in capsys.readouterr().out


def test_pretrained_parts_are_checked_before_any_folder_is_made(tmp_path, capsys):
    assert bench.main(["--pretrained", "m", "--parts", "quick,huge", "--out", str(tmp_path / "b")]) == 2
    assert "unknown --parts huge" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert bench.pretrained_parts(bench.parse_args(["--parts", "cell, quick,cell"])) == ["cell", "quick"]
