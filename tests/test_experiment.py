"""tests of the experiment around the method (harness/experiment.py, and the cli, data, models and records it uses):
the command line and its errors, the pinned --quick run end to end and against the run before the layout redesign,
evaluation, sampling and the kl, the forward-kl pool, the unlabelled pairs, caches, fine-tuning and your own data.
run with `pytest -q tests/test_experiment.py` (-m "not slow" skips the end-to-end runs)."""
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo  # noqa: E402
from harness import cli, data, experiment, models, records, report, task  # noqa: E402
from test_rddpo import PROMPTS, easy_pairs, sharpened, tiny, tokenizer  # noqa: E402, F401 (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root


# -----------------------------------------------------------------------------
# the command line and an end-to-end run


def run_cli(*args, timeout=120):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "rddpo.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_every_flag_with_its_default():
    out = run_cli("--help").stdout
    for flag in ("--model", "--methods", "--bias", "--seeds", "--beta", "--gamma", "--ensemble", "--steps",
                 "--batch-size", "--lr", "--device", "--out", "--data", "--sweep", "--quick", "--pool-batch"):
        assert flag in out
    assert "default: 0.1" in out
    assert "rddpo: reward-distilled DPO in one readable file." in out  # the description, as before issue 23


def test_unreachable_hub_is_one_clear_line_within_seconds(tmp_path):
    t0 = time.time()
    r = run_cli("--model", "gpt2", "--out", str(tmp_path), "--quick")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and "hub" in r.stderr
    assert time.time() - t0 < 60


@pytest.mark.parametrize("args, says", [
    (["--beta", "0"], "--beta must be > 0"),
    (["--beta", "-1"], "--beta must be > 0"),
    (["--gamma", "-0.1"], "--gamma must be >= 0"),
    (["--bias", "1.5"], "--bias must be in [0, 1]"),
    (["--ensemble", "0"], "--ensemble must be >= 1"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--methods", "dpo,ppo"], "unknown method ppo"),
    (["--device", "tpu"], "--device: invalid choice"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nope"], "--device"),
    (["--steps", "many"], "invalid int value"),
    (["--model", "./no/such/model"], "no such folder"),
    (["--sweep", "--sweep-biases", "0,2"], "--sweep-biases"),
    (["--gold", "kind"], "--gold: invalid choice"),
    (["--unlabeled", "-1"], "--unlabeled and --sft-steps must be >= 0"),
    (["--sft-steps", "-1"], "--unlabeled and --sft-steps must be >= 0"),
    (["--unlabeled", "8", "--methods", "dpo,p-dpo"], "--unlabeled applies to d-dpo and e-dpo only"),
])
def test_bad_flag_is_one_error_line_and_exit_2(tmp_path, args, says):
    r = run_cli(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr
    assert not (tmp_path / "out").exists() or not any(p.name.startswith("run-") for p in (tmp_path / "out").iterdir())


def test_unwritable_output_folder_is_an_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    r = run_cli("--out", str(tmp_path / "file" / "out"))
    assert r.returncode == 2 and r.stderr.startswith("error: cannot create --out")


GOOD = {"prompt": "thoughts on dark water :", "chosen": " the plot was great .", "rejected": " the plot was dull ."}


@pytest.mark.parametrize("lines, says", [
    (None, "not found"),
    ([json.dumps(GOOD), "{not json"], "line 2: not valid JSON"),
    ([json.dumps({"prompt": "a", "chosen": "b"})], "line 1: needs the keys prompt, chosen and rejected"),
    ([json.dumps({**GOOD, "chosen": 3})], "line 1: prompt, chosen and rejected must be strings"),
    ([json.dumps({**GOOD, "rejected": "  "})], "line 1: chosen and rejected must not be empty"),
    ([json.dumps(GOOD), json.dumps({**GOOD, "rejected": GOOD["chosen"]})], "line 2: chosen and rejected are identical"),
    ([json.dumps(GOOD)], "holds 1 pairs"),
])
def test_bad_data_file_is_one_error_line_and_exit_2(tmp_path, capsys, lines, says):
    path = tmp_path / "pairs.jsonl"
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    assert experiment.main(["--data", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """one output folder for the end-to-end tests, so the tiny reference is pretrained once and cached."""
    return str(tmp_path_factory.mktemp("runs"))


def quick(runs_dir, **kw):
    return experiment.Config(**{**experiment.QUICK, "quick": True, "out": runs_dir, **kw})


# --quick's numbers per method: gold reward, win rate, KL and the largest margin, under the careful gold reader, with
# the forward-KL pool (issue 13; before it, under the neutral gold, dpo gave 0.0625, 0.484, 0.641, 0.323).
PINNED = {"dpo": (-0.384375, 0.484375, 0.46704480051994324, 0.2772531509399414),
          "ipo": (-0.4890625, 0.3125, 0.30367451906204224, 0.24127769470214844),
          "d-dpo": (-0.5651785714285714, 0.328125, 0.6371440887451172, 0.3422164022922516),
          "e-dpo": (-0.23177083333333334, 0.484375, 0.011891990900039673, 0.06587505340576172),
          "p-dpo": (-0.2947916666666667, 0.421875, 0.08467043191194534, 0.1649799346923828)}
PINNED_METHODS = "DPO,IPO,D-DPO,e-DPO,p-dpo"  # in other cases: the names are read case-blind
PIN_KEYS = ("gold_reward", "win_rate", "kl", "margin_max")
NUMBER_KEYS = PIN_KEYS + ("logps_chosen_change", "logps_rejected_change", "heldout_accuracy", "fkl_train",
                          "fkl_heldout", "length")


def pinned_numbers(results):
    """{method: {key: value}} of a --quick run's records, for the pins and for tests/pin_spread.py."""
    return {r["method"]: {k: r[k] for k in NUMBER_KEYS} for r in results["runs"]}


def pin_deviation(numbers):
    """{key: the largest relative change from PINNED over the methods}."""
    return {k: max(abs(numbers[m][k] - PINNED[m][i]) / max(abs(PINNED[m][i]), 1e-12) for m in PINNED)
            for i, k in enumerate(PIN_KEYS)}


# how close another machine's --quick run must come to PINNED (issue 21). float32 sums come out in another order on
# another CPU, thread count or kernel, and 15 training steps carry that into every number. measured with
# tests/pin_spread.py (1, 2 and 3 threads; torch's own loops without AVX2, ATEN_CPU_CAPABILITY=default; MKL
# limited to SSE4.2 and to AVX) on an AMD EPYC, and on the machine issue 21 was filed from: the largest relative
# change seen was 2.6e-5 (a largest margin, with MKL limited to AVX; 2.3e-5 on the other machine), 2.1e-5 for a KL;
# gold reward and win rate never moved (they count sampled tokens, and no sampled token changed). so: the counted
# numbers exactly, the continuous ones within 3e-4, 11 times the largest change seen. `mutation_check.py --pins`
# checks that bugs which broke the old pins break these too: the same 20 of 23 (docs/METHOD.md#pin-tolerance).
PIN_TOLERANCE = {"gold_reward": 0.0, "win_rate": 0.0, "kl": 3e-4, "margin_max": 3e-4}


def pins_missed(numbers):
    """the pinned numbers a --quick run's {method: {key: value}} misses by more than PIN_TOLERANCE, as lines."""
    return [f"{m} {k}: {numbers[m][k]!r}, pinned {PINNED[m][i]!r} (rel. tolerance {PIN_TOLERANCE[k]:g})"
            for m in PINNED for i, k in enumerate(PIN_KEYS)
            if not abs(numbers[m][k] - PINNED[m][i]) <= PIN_TOLERANCE[k] * abs(PINNED[m][i]) + 1e-12]  # nan misses


# another torch or another kind of machine samples with other kernels (or another random stream): there the pins
# say nothing, so they are checked with the torch and platform they came from only.
SAME_PLATFORM = torch.__version__ == "2.13.0+cpu" and sys.platform == "linux" and os.uname().machine == "x86_64"


@pytest.fixture(scope="module")
def pinned_run(runs_dir):
    """the pinned --quick run (every method, policies saved), made once for the tests that read it."""
    return experiment.run(quick(runs_dir, methods=PINNED_METHODS, save_policy=True))


# what a run records about itself (times, versions, paths, the command), not what it computed
RUN_SPECIFIC = {"run", "seconds", "train_seconds", "train_seconds_mean", "train_seconds_std", "out"}


def differences(before, after, where="", rel=3e-4):
    """where two results.json-like values differ: keys, lengths and texts exactly, numbers within rel (as
    PIN_TOLERANCE's continuous numbers) plus 1e-5 absolute, for values near 0 that are differences of log-probs of
    about 25 nats (float32 rounds those by about 3e-6; at 1 thread against 2, a change of a log-prob's mean of
    -2.4e-4 by 1.1e-6 was seen); the run's own times and paths are skipped."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = (set(before) | set(after)) - RUN_SPECIFIC - (ROUNDING_AT_STEP_1 if before.get("step") == 1 else set())
        return [d for k in sorted(keys, key=str)
                for d in (differences(before.get(k), after.get(k), f"{where}.{k}", rel)
                          if k in before and k in after else [f"{where}.{k}: missing"])]
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items, now {len(after)}"]
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}[{i}]", rel)]
    if isinstance(before, float) and isinstance(after, (int, float)) and not isinstance(after, bool):
        return [] if abs(after - before) <= rel * abs(before) + 1e-5 else [f"{where}: {before!r}, now {after!r}"]
    return [] if before == after else [f"{where}: {before!r}, now {after!r}"]


FLAGS_SINCE_THE_FIXTURE = {"pool_batch": None, "lora": 0, "reward_models": "copies", "micro_batch": None,
                           "data_split": "train", "reward_scale": "1"}
# at step 1 the policy is the reference, so every implicit reward is 0 up to float32 rounding, and the share of
# pairs with r_w > r_l counts which way the rounding fell: 0.0 at 2 threads, 0.0625 (one pair) at 1 thread
ROUNDING_AT_STEP_1 = {"rewards/accuracies"}


@pytest.mark.slow
def test_the_quick_run_gives_what_it_gave_before_the_layout_redesign(pinned_run):
    """issue 23 moved code between files and changed no computation: the pinned --quick run's results.json and
    samples.jsonl hold the same keys, texts and counts as tests/fixtures/quick_before.json (made by the code before
    the move), and, on the platform the pins came from, the same numbers within the pins' tolerance."""
    results, run_dir = pinned_run
    with open(os.path.join(ROOT, "tests", "fixtures", "quick_before.json")) as fh:
        before = json.load(fh)
    after = dict(results=json.loads(open(os.path.join(run_dir, "results.json")).read()),
                 samples=records.read_samples(os.path.join(run_dir, "samples.jsonl")))
    # flags added since the fixture was made, at the default that reproduces what it ran (issue 22: M = B)
    assert {k: after["results"]["config"].pop(k) for k in FLAGS_SINCE_THE_FIXTURE} == FLAGS_SINCE_THE_FIXTURE
    shape = lambda x: {k: shape(v) for k, v in x.items() if k not in RUN_SPECIFIC} if isinstance(x, dict) \
        else [shape(v) for v in x] if isinstance(x, list) else type(x).__name__  # noqa: E731
    assert shape(after["results"]) == shape(before["results"])
    if SAME_PLATFORM:
        assert differences(before["results"], after["results"]) == []
        assert differences(before["samples"], after["samples"]) == []


@pytest.mark.slow
def test_quick_run_end_to_end(pinned_run):
    """python rddpo.py --quick, with the method names in other cases: every method trains and is evaluated at its 3
    checkpoints (the last is its record), e-DPO says which member was the minimum, every reward model has its
    diagnostics, samples.jsonl holds pi_ref's and every method's responses, results.json says the run finished, the
    policies are saved as model folders that from_pretrained loads; on the platform they came from, the pinned numbers
    within their measured tolerance."""
    results, run_dir = pinned_run
    assert [r["method"] for r in results["runs"]] == list(rddpo.METHODS)
    if SAME_PLATFORM:
        assert pins_missed(pinned_numbers(results)) == []
    for r in results["runs"]:
        for k in ("gold_reward", "win_rate", "length", "kl", "kl_per_token", "logps_chosen_change", "margin_max"):
            assert math.isfinite(r[k]), (r["method"], k)
        assert 0 <= r["win_rate"] <= 1 and r["kl"] >= 0 and r["kl_per_token"] <= r["kl"] and r["tokens"] >= 1
        assert [c["step"] for c in r["checkpoints"]] == [5, 10, 15]
        assert {k: v for k, v in r["checkpoints"][-1].items() if k != "step"}.items() <= r.items()
    share = results["runs"][3]["member_min_share"]
    assert len(share) == 4 and sum(share) == pytest.approx(1) and "member_min_share" not in results["runs"][0]
    assert [m["model"] for m in results["reward_models"]] == ["plain"] + [f"member {k}" for k in range(1, 5)]
    assert all(0 <= m["accuracy_labels"] <= 1 and m["heldout_pairs"] == 32 for m in results["reward_models"])
    with open(os.path.join(run_dir, "results.json")) as fh:
        saved = json.load(fh)
    assert saved["config"]["steps"] == experiment.QUICK["steps"] and saved["run"]["status"] == "finished"
    assert saved["config"]["lr"] == 1e-4  # the default rate, as used, is in the record
    samples = records.read_samples(os.path.join(run_dir, "samples.jsonl"))
    assert [s["policy"] for s in samples] == [p for p in ["pi_ref", *rddpo.METHODS] for _ in range(experiment.N_SHOW)]
    assert all(s["logratio"] == 0 for s in samples[:experiment.N_SHOW])
    from transformers import AutoModelForCausalLM
    saved_policy = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "policy-e-dpo-bias0.5-seed0"))
    assert saved_policy.config.n_layer == experiment.Config().n_layer
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert {"rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(rows[0])
    first = [r for r in rows if r["step"] == 1]
    assert len(first) == len(rddpo.METHODS)  # logged before the first update: the policy is the reference,
    for r in first:  # so with dropout off its implicit rewards are 0 (dropout noise would show here)
        assert abs(r["rewards/chosen"]) < 1e-4 and abs(r["rewards/rejected"]) < 1e-4, r
    for name in ("curves.png", "comparison.png", "gold_vs_kl.png", "reward_models.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 1000


@pytest.mark.slow
def test_grid_runs_each_setting_as_a_run_of_its_own_and_reads_its_differences_from_it(runs_dir, capsys):
    """--quick --grid K=2,3 with dpo and e-dpo on seeds 0 and 1: a run folder per K whose results.json says that K,
    with K + 1 reward models per seed and K member shares; the grid's e-dpo - dpo differences are those of that
    run's own records, seed by seed."""
    args = ["--quick", "--grid", "K=2,3", "--methods", "dpo,e-dpo", "--seeds", "0", "1", "--steps", "4", "--rm-steps",
            "4", "--eval-points", "1", "--n-eval", "8", "--out", runs_dir]
    assert experiment.main(args) == 0
    folder = os.path.join(runs_dir, max(d for d in os.listdir(runs_dir) if d.startswith("grid-")))
    with open(os.path.join(folder, "results.json")) as fh:
        saved = json.load(fh)
    assert saved["run"]["status"] == "finished" and [r["value"] for r in saved["rows"]] == ["2", "3"]
    for row, k in zip(saved["rows"], (2, 3)):
        with open(os.path.join(runs_dir, row["run"], "results.json")) as fh:
            run = json.load(fh)
        assert run["config"]["ensemble"] == k and len(row["member_min_share"]) == k
        assert len([m for m in run["reward_models"] if m["seed"] == 0]) == k + 1
        for key in ("win_rate", "kl"):
            want = report.paired(run["runs"], key, "dpo")[0]
            got = [p for p in row["differences"] if p["key"] == key and p["base"] == "dpo"][0]
            assert got["seeds"] == [0, 1] and got["diffs"] == pytest.approx(want["diffs"], abs=0)
    assert os.path.getsize(os.path.join(folder, "grid.png")) > 1000
    assert "K 2" in capsys.readouterr().out


def test_bfloat16_runs_the_forward_passes_in_bfloat16_and_keeps_log_probs_and_weights_float32(runs_dir, monkeypatch):
    """--dtype bfloat16: the policy's logits come out in bfloat16 (autocast), its sequence log-probs and its weights
    stay float32, and the run's numbers are finite."""
    seen = []
    real = rddpo.sequence_logps
    def spy(logits, input_ids, response_mask):
        seen.append(logits.dtype)
        out = real(logits, input_ids, response_mask)
        assert out.dtype == torch.float32
        return out
    monkeypatch.setattr(rddpo, "sequence_logps", spy)
    # e-dpo: reward models too
    results, _ = experiment.run(quick(runs_dir, methods="dpo,e-dpo", steps=2, dtype="bfloat16"))
    assert torch.bfloat16 in seen and all(math.isfinite(r[k]) for r in results["runs"] for k in ("kl", "win_rate"))
    assert all(math.isfinite(m["reward_diff"]) for m in results["reward_models"])


def without_times(obj):
    """drop every field that holds a time, and the output folder."""
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if "seconds" not in k and k not in ("out", "run")}
    return [without_times(v) for v in obj] if isinstance(obj, list) else obj


@pytest.mark.slow
def test_same_seed_reproduces_results_and_another_seed_does_not(runs_dir):
    """two runs of the same command land in two run folders (nothing overwritten) with identical results,
    times excepted; seed 1 gives different numbers. dpo and e-dpo: between them every random draw (pairs, labels,
    reward models, the pool, training order, sampling)."""
    (a, dir_a), (b, dir_b) = (experiment.run(quick(runs_dir, methods="dpo,e-dpo")) for _ in range(2))
    assert dir_a != dir_b
    with open(os.path.join(dir_a, "results.json")) as fa, open(os.path.join(dir_b, "results.json")) as fb:
        assert without_times(json.load(fa)) == without_times(json.load(fb))
    c, _ = experiment.run(quick(runs_dir, seeds=[1], methods="dpo,e-dpo"))
    assert [r["gold_reward"] for r in c["runs"]] != [r["gold_reward"] for r in a["runs"]]


@pytest.mark.slow
def test_nan_loss_stops_with_method_and_step_and_keeps_finished_results(runs_dir, monkeypatch, capsys):
    """ipo returns nan: training stops at ipo's step 1 with a message; dpo, trained before it, is in results.json."""
    monkeypatch.setattr(rddpo, "ipo_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    assert experiment.main(["--quick", "--methods", "dpo,ipo", "--out", runs_dir]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ipo:") and "step 1" in err
    run_dir = max(p for p in os.listdir(runs_dir) if p.startswith("run-"))
    with open(os.path.join(runs_dir, run_dir, "results.json")) as fh:
        assert [r["method"] for r in json.load(fh)["runs"]] == ["dpo"]


@pytest.mark.slow
def test_own_data_file_runs_and_reports_truncation(runs_dir, tmp_path, capsys):
    """20 pairs in trl's format, one with a response longer than the context: it is truncated and reported;
    without a gold reward the results hold held-out preference accuracy instead."""
    rng = np.random.default_rng(0)
    rows = [{"prompt": task.make_prompts(rng, 1, task.TITLES)[0], "chosen": " the plot was great .",
             "rejected": f" the plot was {task.NEGATIVE[i % 5]} ."} for i in range(20)]
    rows[3]["chosen"] = " the plot was great ." * 20
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results, run_dir = experiment.run(quick(runs_dir, data=str(path), methods="dpo,e-dpo", batch_size=4, seeds=[0, 1]))
    out = capsys.readouterr().out
    assert "1 pairs truncated" in out
    assert all("heldout_accuracy" in r and "gold_reward" not in r for r in results["runs"])
    # nothing of the built-in task (its annotator's bias, its gold reader) in what a run on your own data says
    saved = "".join(open(os.path.join(run_dir, f)).read() for f in ("results.json", "metrics.jsonl", "samples.jsonl"))
    for text in (out, saved):
        assert "bias" not in text.replace('"bias": null', "").lower() and "gold" not in text.lower()


# -----------------------------------------------------------------------------
# one command line: presets, flags that do not apply, checks before any work


def test_quick_sets_defaults_only_and_a_flag_given_beside_it_wins():
    """--quick --steps 3 trains 3 steps; the preset's other values still apply; without --quick, the defaults."""
    cfg, given = experiment.parse_args(["--quick", "--steps", "3"])
    assert cfg.steps == 3 and given == {"quick", "steps"}
    assert cfg.rm_steps == experiment.QUICK["rm_steps"] and cfg.n_pairs == experiment.QUICK["n_pairs"]
    assert experiment.parse_args(["--quick"])[0].steps == experiment.QUICK["steps"]
    assert experiment.parse_args(["--quick", "--steps", "150"])[0].steps == 150  # given, though equal to the default
    assert experiment.parse_args(["--steps", "3"])[0].rm_steps == experiment.Config().rm_steps


def test_method_names_are_case_insensitive():
    assert experiment.Config(methods="DPO, e-DPO,P-dpo").method_list() == ["dpo", "e-dpo", "p-dpo"]
    cli.check_config(experiment.Config(methods="IPO,D-DPO"), rddpo.METHODS)  # no error


def test_data_with_words_the_tiny_model_does_not_know_is_refused_before_any_work(tmp_path, capsys):
    """a pair with one word outside the task's vocabulary ('popcorn'): one error line that names the share of unknown
    tokens and what to pass instead, exit 2, and no run folder."""
    path = tmp_path / "pairs.jsonl"
    path.write_text((json.dumps(GOOD) + "\n") * 19 + json.dumps({**GOOD, "chosen": " the popcorn was great ."}) + "\n")
    assert experiment.main(["--data", str(path), "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown to the built-in tiny model" in err[0] and "--model" in err[0], err
    assert "0%" not in err[0].split(" of the tokens")[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["--bias", "0.3"], "--bias applies to the built-in task only"),
    (["--n-pairs", "100"], "--n-pairs applies to the built-in task only"),
    (["--n-eval", "10"], "--n-eval applies to the built-in task only"),
    (["--sweep"], "--sweep applies to the built-in task only"),
    (["--gold", "neutral"], "--gold applies to the built-in task only"),
    (["--max-length", "32"], "--max-length 32 cannot hold the task's longest prompt and review"),  # the tiny model's
    (["--batch-size", "19"], "--batch-size 19 is larger than the 18 training pairs"),  # 20 pairs, 2 held out
    (["--batch-size", "4", "--max-length", "45", "--methods", "dpo", "--quick"],
     "whose prompt fits in --max-length 45"),
])
def test_a_builtin_task_flag_with_data_is_an_error(tmp_path, capsys, args, says):
    path = tmp_path / "pairs.jsonl"
    path.write_text((json.dumps(GOOD) + "\n") * 20)
    if "whose prompt fits" in says:  # every prompt longer than the context: found before pretraining starts
        path.write_text((json.dumps({**GOOD, "prompt": "the " * 60}) + "\n") * 20)
    assert experiment.main(["--data", str(path), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [
    (["--sweep-biases", "0,1"], "--sweep-biases applies to --sweep only"),
    (["--sweep", "--bias", "0.2"], "--bias applies to no run under --sweep"),
    (["--seeds", "1", "2", "1"], "--seeds has a duplicate"),
    (["--seeds", "-1"], "--seeds must be >= 0"),
    (["--eval-points", "0"], "--eval-points must be >= 1"),
    (["--model", "gpt2", "--n-layer", "4"], "--n-layer applies to the built-in tiny model only"),
    (["--methods", "dpo,ipo", "--gamma", "0.2"], "--gamma applies to e-dpo and p-dpo only"),
    (["--methods", "p-dpo", "--ensemble", "2"], "--ensemble applies to e-dpo only"),
    (["--methods", "dpo,d-dpo", "--pool-batch", "4"], "--pool-batch applies to e-dpo and p-dpo only"),
    (["--pool-batch", "0"], "--pool-batch must be >= 1 (got 0)"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1 (got 0)"),
    (["--methods", "dpo,DPO"], "--methods names a value twice"),
    (["--sweep", "--sweep-biases", "0,0.5,0"], "--sweep-biases names a value twice"),
    (["--max-length", "32"], "--max-length 32 cannot hold the task's longest prompt and review (45 tokens)"),
    (["--batch-size", "65", "--n-pairs", "64"], "--batch-size 65 is larger than the 64 training pairs"),
])
def test_flag_errors_come_before_any_work_and_leave_no_run_folder(tmp_path, capsys, args, says):
    """each fails within a second or two (no pretraining: --max-length is checked before it), with one line."""
    t0 = time.time()
    assert experiment.main([*args, "--out", str(tmp_path / "out")]) == 2
    assert time.time() - t0 < 10
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe{\x00\"\x00", "is not UTF-8 text"),
    (b"prompt,chosen,rejected\nhi,a,b\nho,c,d\n", "looks like CSV"),
])
def test_a_data_file_that_is_not_json_lines_is_one_error_line(tmp_path, capsys, content, says):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    assert experiment.main(["--data", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err


def fake_experiment(monkeypatch, stop_seed=1):
    """the experiment without models, in a blink: each method run is a made-up dpo record, and ctrl-c comes when
    seed `stop_seed` starts training. -> the seeds whose training started, in order"""
    calls = []
    def fake_train_and_evaluate(reference, tokenizer, pairs, ev, method, cfg, bias, seed, device, log, save_dir):
        calls.append(seed)
        if seed == stop_seed:
            raise KeyboardInterrupt
        return dict(bias=bias, seed=seed, method="dpo", kl=0.0, length=1.0, train_seconds=0.0), []
    monkeypatch.setattr(experiment, "load_reference", lambda cfg, device, check: (None, None))
    held = experiment.HeldOut([], [], [], None, ref_shown=[])
    monkeypatch.setattr(experiment, "prepare", lambda *args: (None, held, dict(pairs=1), []))
    monkeypatch.setattr(experiment, "train_and_evaluate", fake_train_and_evaluate)
    return calls


def test_ctrl_c_keeps_the_finished_runs_and_says_where_and_how_to_resume_in_one_line(tmp_path, monkeypatch, capsys):
    """seed 0 finishes, ctrl-c comes during seed 1: exit 130, one line naming results.json, which holds seed 0 and
    says ctrl-c stopped it, and the command that goes on with it."""
    calls = fake_experiment(monkeypatch)
    assert experiment.main(["--seeds", "0", "1", "--methods", "dpo", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    path = tmp_path / "run-001" / "results.json"
    assert calls == [0, 1] and len(err) == 1 and "interrupted by ctrl-c" in err[0] and str(path) in err[0], err
    assert err[0].endswith(f"python rddpo.py --resume {tmp_path / 'run-001'}")
    saved = json.loads(path.read_text())
    assert [r["seed"] for r in saved["runs"]] == [0] and saved["run"]["interrupted_by"] == "ctrl-c"


# -----------------------------------------------------------------------------
# stopping a run and going on with it: --resume, SIGTERM, the run's clock


# the smallest run with everything --resume keeps: two seeds, and e-dpo's reward models and forward-KL pool
RESUME_ARGS = ["--quick", "--methods", "dpo,e-dpo", "--seeds", "0", "1", "--steps", "1", "--rm-steps", "1",
               "--n-pairs", "4", "--n-eval", "4", "--batch-size", "4", "--eval-points", "1", "--ensemble", "1",
               "--max-new-tokens", "4", "--sft-steps", "1"]


def stop_at(monkeypatch):
    """-> a list of one item: set it to (seed, method), and ctrl-c comes in that method run's training just after its
    first logged row (metrics.jsonl has it); None: no ctrl-c."""
    real, when = rddpo.train_policy, [None]
    def train_policy(reference, pairs, method, knobs, seed, device, log, checkpoint):
        def log_then_stop(step, metrics):
            log(step, metrics)
            if (seed, method) == when[0]:
                raise KeyboardInterrupt
        return real(reference, pairs, method, knobs, seed, device, log=log_then_stop, checkpoint=checkpoint)
    monkeypatch.setattr(experiment, "train_policy", train_policy)
    return when


def saved_files(folder):
    """{path: bytes} of every file under a folder."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture
def one_thread():
    """torch on one thread for a test of many tiny steps: on two free cores about as fast, and on cores shared with
    other work several times faster (two threads wait on each other); the test compares runs made alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_resumed_run_writes_what_an_uninterrupted_run_writes_and_prepares_nothing_twice(tmp_path, monkeypatch,
                                                                                        capsys, one_thread):
    """a run stopped by ctrl-c in seed 0's e-dpo, resumed (the flags given beside --resume as the run's own), stopped
    again in seed 1's dpo after seed 1 was prepared, and resumed to the end, writes the results.json (times and
    paths aside), samples.jsonl and metrics.jsonl, byte for byte, of the same run made without a stop in another
    --out: the same runs and numbers exactly (same machine, same threads), no row twice. prepare runs once per
    seed in all: a resume reads an earlier session's preparation from prepared/, and skips a finished seed. the
    uninterrupted run prints one line of the run's clock (when told to for a run this short: a run with less than
    a minute to go prints none)."""
    when, seen, real_prepare = stop_at(monkeypatch), [], experiment.prepare
    def spy(reference, tokenizer, cfg, bias, seed, device, user_pairs):
        seen.append(seed)
        return real_prepare(reference, tokenizer, cfg, bias, seed, device, user_pairs)
    monkeypatch.setattr(experiment, "prepare", spy)
    monkeypatch.setattr(records, "plot", lambda *args: None)  # figures are not compared: no time drawing them
    monkeypatch.setattr(experiment, "CLOCK_FROM", 0)  # this short run's clock, shown though it is under a minute
    assert experiment.main(RESUME_ARGS + ["--out", str(tmp_path / "whole")]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("run: about")]) == 1
    monkeypatch.setattr(experiment, "CLOCK_FROM", 60)
    folder = tmp_path / "stopped" / "run-001"
    sessions = [((0, "e-dpo"), RESUME_ARGS + ["--out", str(tmp_path / "stopped")], 130, [0]),
                ((1, "dpo"), ["--resume", str(folder), "--methods", "DPO,e-dpo", "--seeds", "0", "1"], 130, [1]),
                (None, ["--resume", str(folder)], 0, [])]
    walls = []
    for n, (stop, args, status, prepared) in enumerate(sessions):
        when[0], seen[:] = stop, []
        assert experiment.main(args) == status and seen == prepared, n
        err = capsys.readouterr().err.strip().splitlines()
        saved = json.loads((folder / "results.json").read_text())
        walls.append(saved["run"]["wall_seconds"])
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        if status == 130:  # what the next session must drop: a started method's rows (and seed 1's reward models)
            assert len(err) == 1 and err[0].endswith(f"to go on: python rddpo.py --resume {folder}"), err
            assert saved["run"]["interrupted_by"] == "ctrl-c" and (folder / "prepared" / "bias0.5-seed0.pt").is_file()
            assert [(m["seed"], m["method"]) for m in metrics][-1] == stop and len(saved["runs"]) == n + 1
            assert {m["seed"] for m in saved["reward_models"]} == {0, n}
    assert saved["run"]["status"] == "finished" and not (folder / "prepared").exists()
    assert [(r["after"], r["interrupted_by"]) for r in saved["run"]["resumed"]] == [("interrupted", "ctrl-c")] * 2
    assert "interrupted_by" not in saved["run"] and walls == sorted(set(walls))  # the sessions' wall times add up
    whole = tmp_path / "whole" / "run-001"
    assert without_times(saved) == without_times(json.loads((whole / "results.json").read_text()))
    for name in ("samples.jsonl", "metrics.jsonl"):
        assert (folder / name).read_bytes() == (whole / name).read_bytes(), name


def test_resuming_with_other_code_than_started_the_run_says_so_in_one_line(capsys):
    """another git commit or torch version: a note naming both; the same: nothing."""
    run = dict(git_commit="abc", torch="2.13.0+cpu", python="3.11.7")
    records.note_other_code(run, dict(run, python="3.12.0"))
    assert capsys.readouterr().out == ""
    records.note_other_code(run, dict(run, git_commit="def"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: ") and "git_commit abc (now def)" in lines[0]


def stopped_run(tmp_path, monkeypatch):
    """an interrupted run's folder (no models: seed 0's made-up dpo record, ctrl-c in seed 1), and its files."""
    fake_experiment(monkeypatch)
    assert experiment.main(["--seeds", "0", "1", "--methods", "dpo", "--out", str(tmp_path)]) == 130
    folder = tmp_path / "run-001"
    return folder, saved_files(folder)


@pytest.mark.parametrize("args, says", [
    (["--steps", "7"], "--steps 7 differs from the run's own setting (--steps 150, in "),
    (["--methods", "dpo,ipo"], "--methods dpo,ipo differs from the run's own setting (--methods dpo, in "),
    (["--quick"], "--quick differs from the run's own setting (no --quick, in "),
    (["--seeds", "0"], "--seeds 0 differs from the run's own setting (--seeds 0 1, in "),
    (["--out", "elsewhere"], "--out elsewhere differs"),
    (["--grid", "K=2,3"], "--grid K=2,3 differs"),
])
def test_a_flag_beside_resume_that_differs_from_the_runs_own_is_one_error_line_and_changes_nothing(
        tmp_path, monkeypatch, capsys, args, says):
    """the values parsed from the command line against those in results.json: one error line naming the flag and
    both values, exit 2, every file of the folder as it was. flags that say the run's own values (in another case,
    another order of writing) are accepted: that resume goes on, to the next ctrl-c."""
    folder, before = stopped_run(tmp_path, monkeypatch)
    capsys.readouterr()
    assert experiment.main(["--resume", str(folder), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert saved_files(folder) == before
    same = ["--methods", "DPO", "--seeds", "0", "1", "--out", str(tmp_path)]
    assert experiment.main(["--resume", str(folder), *same]) == 130
    assert "resuming" in capsys.readouterr().out


@pytest.mark.parametrize("case, says", [
    ("empty folder", "not a run's folder"),
    ("no folder", "not a run's folder"),
    ("not json", "not a run's folder"),
    ("finished", "this run has finished, so there is nothing to resume"),
    ("grid", "a --grid run, which --resume does not continue"),
    ("another device", "the run ran on cuda:7, and its --device auto is "),
])
def test_resuming_what_is_not_an_unfinished_run_is_one_error_line_and_changes_nothing(tmp_path, monkeypatch, capsys,
                                                                                     case, says):
    folder, _ = stopped_run(tmp_path, monkeypatch)
    results = json.loads((folder / "results.json").read_text())
    if case in ("empty folder", "no folder"):
        folder = tmp_path / "other"
        folder.mkdir() if case == "empty folder" else None
    elif case == "not json":
        (folder / "results.json").write_text("{")
    else:
        changes = {"finished": dict(run=dict(results["run"], status="finished")),
                   "grid": dict(config=dict(results["config"], grid=["K=2,3"]), rows=[]),
                   "another device": dict(device="cuda:7")}
        (folder / "results.json").write_text(json.dumps(dict(results, **changes[case])))
    before = saved_files(folder) if folder.exists() else None
    capsys.readouterr()
    assert experiment.main(["--resume", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert (saved_files(folder) if folder.exists() else None) == before


def test_sigterm_stops_a_run_as_ctrl_c_does_and_says_how_to_go_on(tmp_path):
    """python rddpo.py in a process of its own, sent SIGTERM (as a scheduler or a pre-empted machine sends it) once
    results.json holds a finished method run: exit 130, results.json says interrupted by SIGTERM and keeps the
    finished runs, and stderr's one line says what was kept and the command that goes on with the run. (about 5 s:
    the process loads torch and fine-tunes its reference for one step)"""
    import signal
    args = ["--quick", "--methods", "dpo", "--seeds", *map(str, range(8)), "--steps", "2", "--n-pairs", "8",
            "--n-eval", "4", "--batch-size", "4", "--eval-points", "1", "--max-new-tokens", "8", "--sft-steps", "1"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "rddpo.py"), *args, "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg"))
    path, deadline = tmp_path / "run-001" / "results.json", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads(path.read_text())["runs"]:
                break
        except (OSError, ValueError):  # not written yet
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    saved = json.loads(path.read_text())
    assert proc.returncode == 130, err[-2000:]
    assert saved["run"]["status"] == "interrupted" and saved["run"]["interrupted_by"] == "SIGTERM"
    n = len(saved["runs"])
    assert 1 <= n < 8 and [r["seed"] for r in saved["runs"]] == list(range(n))
    assert err.strip().splitlines() == [f"interrupted by SIGTERM: {n} finished method runs kept in {path}; "
                                        f"to go on: python rddpo.py --resume {path.parent}"]


def test_the_runs_clock_counts_what_is_left_at_the_measured_times_and_over_an_hour_names_what_fits():
    """4 biases x 5 seeds x dpo, e-dpo, p-dpo, after the first preparation (6 min) and dpo run (9 min): 19
    preparations and 19 dpo runs to go at those times, 20 e-dpo and 20 p-dpo runs at 1.5 x dpo's (no pooled method
    measured yet): 49500 s. over an hour on a cpu: --quick, the whole run at 15 of 150 steps and reward-model steps
    (20 x (36 + 54 + 81 + 81) s), or a GPU. under an hour, or already at --quick's steps, or on a GPU: less said."""
    cfg = experiment.Config(methods="dpo,e-dpo,p-dpo", seeds=[0, 1, 2, 3, 4], sweep=True,
                            sweep_biases="0,0.25,0.5,1")
    biases, runs = cli.sweep_bias_list(cfg), [dict(method="dpo", train_seconds=540.0)]
    to_go = ["dpo"] * 19 + ["e-dpo", "p-dpo"] * 20
    line = experiment.clock_line(cfg, biases, torch.device("cpu"), 360.0, runs, 19, to_go)
    assert line == ("run: about 13 h 45 min to go on cpu (4 biases x 5 seeds x 3 methods; measured: 6 min per "
                    "preparation, 9 min per dpo run); over an hour: try --quick (about 1 h 24 min) or a GPU "
                    "(--device cuda)")
    assert experiment.clock_line(cfg, biases, "cuda", 360.0, runs, 19, to_go).endswith("try --quick (about 1 h 24 min)")
    small = dataclasses.replace(cfg, steps=15, rm_steps=15)
    assert experiment.clock_line(small, biases, "cpu", 360.0, runs, 19, to_go).endswith("; over an hour: try a GPU "
                                                                                         "(--device cuda)")
    assert "over an hour" not in experiment.clock_line(small, biases, "cuda", 360.0, runs, 19, to_go)
    assert experiment.clock_line(cfg, biases, "cpu", 30.0, runs, 1, ["dpo", "e-dpo"]) == (
        "run: about 23 min to go on cpu (4 biases x 5 seeds x 3 methods; measured: 30 s per preparation, 9 min per "
        "dpo run)")  # 30 + 540 + 810 s


def test_the_runs_clock_takes_each_methods_measured_time_and_else_its_kinds_or_the_pool_ratio():
    """measured dpo 100 s, e-dpo 300 s: ipo and d-dpo at dpo's, p-dpo at e-dpo's (the measured kind). only dpo
    measured, at --pool-batch 8 beside a batch of 16: e-dpo at (32 + 8) / 32 = 1.25 x; only e-dpo measured: dpo at
    1 / 1.5 of it (the default pool batch). dpo measured twice (900 s, then 100 s): its latest, 100 s."""
    cfg = experiment.Config(methods="dpo,ipo,d-dpo,e-dpo,p-dpo")
    both = experiment.expected_seconds(cfg, [dict(method="dpo", train_seconds=100.0),
                                             dict(method="e-dpo", train_seconds=300.0)])
    assert both == {"dpo": 100.0, "ipo": 100.0, "d-dpo": 100.0, "e-dpo": 300.0, "p-dpo": 300.0}
    one = experiment.expected_seconds(dataclasses.replace(cfg, pool_batch=8), [dict(method="dpo", train_seconds=100.0)])
    assert one["e-dpo"] == one["p-dpo"] == 125.0 and one["ipo"] == 100.0
    assert experiment.expected_seconds(cfg, [dict(method="e-dpo", train_seconds=150.0)])["dpo"] == 100.0
    resumed = experiment.expected_seconds(cfg, [dict(method="dpo", train_seconds=900.0), dict(method="e-dpo",
                                                                                              train_seconds=2400.0),
                                                dict(method="dpo", train_seconds=100.0)])  # a quieter machine now
    assert resumed["dpo"] == resumed["ipo"] == 100.0 and resumed["e-dpo"] == 2400.0
    assert [experiment.duration(s) for s in (44.6, 89, 90, 3569, 3600, 11400)] == [
        "45 s", "89 s", "2 min", "59 min", "1 h 0 min", "3 h 10 min"]


def test_a_file_written_whole_leaves_no_temporary_file_when_interrupted(tmp_path, monkeypatch):
    """ctrl-c (or SIGTERM) between writing the temporary file and renaming it: the old file stays as it was."""
    path = tmp_path / "results.json"
    path.write_text("old")
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(records.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        records.write_whole(str(path), "new")
    assert os.listdir(tmp_path) == ["results.json"] and path.read_text() == "old"


def test_a_run_folder_taken_at_the_same_moment_is_skipped(tmp_path, monkeypatch):
    """another run made run-001 after this one listed the folder: this one takes run-002."""
    (tmp_path / "run-001").mkdir()
    monkeypatch.setattr(records.os, "listdir", lambda path: [])  # the stale listing
    assert records.new_run_dir(str(tmp_path)) == str(tmp_path / "run-002")


def test_a_reference_cached_by_another_run_meanwhile_is_used_and_no_temporary_folder_is_left(tmp_path, tiny, tokenizer):
    """two runs pretrain at once; the other renames its copy into place first: this one loads that copy."""
    path = str(tmp_path / "reference")
    other = copy.deepcopy(tiny)
    torch.nn.init.zeros_(other.lm_head.weight)
    def build():  # while this run builds, the other one finishes
        other.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return copy.deepcopy(tiny), tokenizer
    model, _ = models.cached_model(path, build)
    assert torch.equal(model.lm_head.weight, other.lm_head.weight)
    assert os.listdir(tmp_path) == ["reference"]


@pytest.mark.slow
def test_two_runs_started_at_once_into_the_same_out_both_succeed(tmp_path):
    """two processes, one --out, no cached reference: both pretrain, both finish, in two run folders."""
    args = [sys.executable, os.path.join(ROOT, "rddpo.py"), "--quick", "--sft-steps", "20", "--methods", "dpo",
            "--steps", "2", "--rm-steps", "2", "--n-pairs", "16", "--n-eval", "4",
            "--batch-size", "4", "--out", str(tmp_path)]
    # one thread each: two processes of two threads on a 2-core machine wait on each other (measured: 37 s against 10)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
    assert sorted(os.listdir(tmp_path)) == ["reference-L2-E64-H4-T64-S20", "run-001", "run-002"]


def test_a_data_file_with_a_byte_order_mark_or_unicode_line_separators_reads_as_json_lines(tmp_path):
    """a bom before the first object, and u+2028 inside a json string (json allows it unescaped): 2 pairs."""
    row = {**GOOD, "chosen": " the plot was great .\u2028 really ."}
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(GOOD) + "\n").encode())
    assert data.read_pairs(str(path)) == [(row["prompt"], row["chosen"], row["rejected"]),
                                                  (GOOD["prompt"], GOOD["chosen"], GOOD["rejected"])]


def test_an_interrupted_cache_write_leaves_no_temporary_folder(tmp_path, tiny, tokenizer, monkeypatch):
    """ctrl-c while the pretrained reference is being saved: no reference-*.tmpPID folder is left behind."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(type(tokenizer), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.cached_model(str(tmp_path / "reference"), lambda: (tiny, tokenizer))
    assert os.listdir(tmp_path) == []


def test_each_seeds_split_needs_a_batch_of_fitting_training_pairs_and_one_fitting_held_out_pair():
    """fits() says which prompts fit the context: 3 short training prompts hold a batch of 3, not of 4; a split whose
    held-out prompts are all too long is refused; every split is checked, not only the first seed's."""
    short, long = ("p", "c", "r"), ("p" * 50, "c", "r")
    fits = lambda prompt: len(prompt) < 10  # noqa: E731
    ok = ([short] * 3 + [long], [short, long])
    data.check_splits([ok], fits, batch_size=3, max_length=10)
    with pytest.raises(cli.UsageError, match="--batch-size 4 is larger than the 3 training pairs"):
        data.check_splits([ok], fits, batch_size=4, max_length=10)
    with pytest.raises(cli.UsageError, match="no held-out prompt fits"):
        data.check_splits([ok, ([short] * 3, [long])], fits, batch_size=3, max_length=10)
    data.check_splits([([long] * 3, [long])], None, batch_size=3, max_length=10)  # None: all fit


# -----------------------------------------------------------------------------
# exact evaluation: sampling with a cache, the kl


def sample_without_cache(model, tokenizer, prompts, max_new_tokens):
    """the plain loop: the whole sequence through the model for every new token; response ids as drawn."""
    eos = tokenizer.eos_token_id
    ids, mask = rddpo.pad([tokenizer(p, add_special_tokens=False).input_ids for p in prompts], eos, side="left")
    done, start = torch.zeros(len(ids), dtype=torch.bool), ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = torch.multinomial(rddpo.forward(model, ids, mask)[:, -1].float().softmax(-1), 1).squeeze(-1)
            nxt = nxt.masked_fill(done, eos)
            ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, (~done).long()[:, None]], 1)
            done |= nxt == eos
            if done.all():
                break
    return [row[:row.index(eos) + 1] if eos in row else row for row in ids[:, start:].tolist()]


def test_sampling_with_a_key_value_cache_draws_what_the_plain_loop_draws(tiny, tokenizer):
    """same seed, same prompts of different lengths (left padding): the same token ids, cut-off ones without eos."""
    prompts = PROMPTS + ["a few words about the glass house :"]
    torch.manual_seed(3)
    drawn = models.sample(tiny, tokenizer, prompts, max_new_tokens=12, max_length=64, device="cpu")
    torch.manual_seed(3)
    assert drawn.response_ids == sample_without_cache(tiny, tokenizer, prompts, 12)
    assert any(tokenizer.eos_token_id not in r for r in drawn.response_ids)  # a random model rarely stops: cut-offs


class WithoutLogitsToKeep(torch.nn.Module):
    """a causal LM whose forward names its arguments and has no logits_to_keep, as some remote-code models do."""
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                          use_cache=use_cache)


def test_sampling_a_model_without_logits_to_keep_draws_what_the_model_with_it_draws(tiny, tokenizer):
    """the sampler asks for the last position's logits only; a model that refuses the argument is sampled with every
    position's logits instead, and the same seed draws the same ids."""
    torch.manual_seed(5)
    drawn = models.sample(tiny, tokenizer, PROMPTS, max_new_tokens=8, max_length=64, device="cpu")
    torch.manual_seed(5)
    assert models.sample(WithoutLogitsToKeep(tiny), tokenizer, PROMPTS, max_new_tokens=8, max_length=64,
                         device="cpu").response_ids == drawn.response_ids


def ids_logp(model, prompt_ids, response_ids):
    """log p(response | prompt) of exact token ids, one token at a time, unpadded."""
    ids = list(prompt_ids) + list(response_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()  # (T, V)
    return sum(logits[t - 1].log_softmax(-1)[ids[t]].item() for t in range(len(prompt_ids), len(ids)))


def test_kl_of_sampled_responses_is_never_negative_and_its_mean_is_the_exact_kl(tiny, tokenizer):
    """responses of at most 2 tokens: the exact KL(pi || pi_ref) over all V + V^2 responses, by enumeration, is
    KL at the first position plus, for every first token but eos, pi(y1) times KL at the second. the estimate
    from 3000 samples of pi is within 4 standard errors of it, and no sample's value is below 0 (a log-ratio of
    re-tokenised text with an eos added, as the code did before, has neither property)."""
    policy, eos = sharpened(tiny), tokenizer.eos_token_id
    # and it rarely ends a response: eos 6 nats less likely, so most of its samples are cut off at 2 tokens, where
    # adding an eos to score them (as the code did before) adds log pi(eos) - log pi_ref(eos) << 0 to the estimate
    policy.lm_head.register_forward_hook(
        lambda module, args, logits: logits - 6.0 * (torch.arange(logits.shape[-1]) == eos))
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False).input_ids
    V = len(tokenizer)
    with torch.no_grad():
        def next_logps(model, seqs):  # (S, V): log-probs of the token after each sequence
            ids = torch.tensor(seqs)
            return model(input_ids=ids).logits[:, -1].double().log_softmax(-1)
        lp1, lq1 = next_logps(policy, [prompt]), next_logps(tiny, [prompt])  # (1, V)
        second = [prompt + [y] for y in range(V)]
        lp2, lq2 = next_logps(policy, second), next_logps(tiny, second)  # (V, V)
    kl1 = (lp1.exp() * (lp1 - lq1)).sum()
    kl2 = (lp2.exp() * (lp2 - lq2)).sum(-1)  # (V,)
    exact = (kl1 + (lp1[0].exp() * kl2)[torch.arange(V) != eos].sum()).item()
    torch.manual_seed(0)
    drawn = models.sample(policy, tokenizer, [PROMPTS[0]] * 3000, max_new_tokens=2, max_length=64, device="cpu")
    kl, logratio = experiment.sequence_kl(policy, tiny, rddpo.token_rows(drawn.prompt_ids, drawn.response_ids, eos),
                                          "cpu")
    assert (kl >= 0).all() and exact > 0.5
    assert abs(kl.mean().item() - exact) < 4 * kl.std().item() / math.sqrt(len(kl)), (kl.mean().item(), exact)
    assert abs(logratio.mean().item() - exact) < 4 * logratio.std().item() / math.sqrt(len(kl))  # also unbiased


# -----------------------------------------------------------------------------
# training and evaluation against hand computations


def test_evaluate_gives_win_rate_one_half_and_kl_zero_for_the_reference_and_kl_above_zero_for_another_policy(
        tiny, tokenizer):
    """the policy is the reference and its samples are drawn with the same seed as pi_ref's: every gold reward ties,
    so the win rate is exactly 0.5 (ties count half) and the KL exactly 0; a sharpened policy has KL > 0."""
    prompts = PROMPTS * 6
    torch.manual_seed(11)
    ref = models.sample(tiny, tokenizer, prompts, 12, 64, "cpu")
    ev = experiment.held_out(prompts[:3], [" the plot was great ."] * 3, [" the plot was awful ."] * 3, tiny, tokenizer,
                             64, "cpu", ref, gold="careful",
                             ref_gold=np.array([task.gold_reward(t) for t in ref.texts]), ref_length=1.0)
    ev.prompts = prompts
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(tiny, pairs.tokens, np.arange(16), "cpu")
    torch.manual_seed(11)
    same, _ = experiment.evaluate(copy.deepcopy(tiny), tiny, tokenizer, pairs, ev, 0.1, 12, 64, "cpu")
    assert same["win_rate"] == 0.5 and same["kl"] == 0.0 and same["margin_max"] == 0.0
    assert same["heldout_accuracy"] == 0.5  # h = 0 on every held-out pair: a tie, counted half
    assert same["fkl_heldout"] == 0.0 and same["fkl_train"] == 0.0
    torch.manual_seed(11)
    other, shown = experiment.evaluate(sharpened(tiny), tiny, tokenizer, pairs, ev, 0.1, 12, 64, "cpu", n_show=3)
    assert other["kl"] > 0.1 and other["kl_per_token"] > 0
    torch.manual_seed(11)  # the same samples again: KL(pi || pi_ref), the policy first (the enumeration test checks it)
    drawn = models.sample(sharpened(tiny), tokenizer, prompts, 12, 64, "cpu")
    kl, logratio = experiment.sequence_kl(sharpened(tiny), tiny, rddpo.token_rows(drawn.prompt_ids, drawn.response_ids,
                                                                              tokenizer.eos_token_id), "cpu")
    assert other["kl"] == pytest.approx(kl.mean().item(), rel=1e-6)
    assert [s["logratio"] for s in shown] == pytest.approx(logratio[:3].tolist(), rel=1e-6)
    # the forward KL on pi_ref's own held-out responses (the first three prompts'), summed token by token
    fkl = np.mean([ids_logp(tiny, p, r) - ids_logp(sharpened(tiny), p, r)
                   for p, r in zip(ref.prompt_ids[:3], ref.response_ids[:3])])
    assert other["fkl_heldout"] == pytest.approx(fkl, rel=1e-4) and fkl > 0


def test_split_pairs_holds_out_a_tenth_disjoint_from_training_and_seeded():
    """20 pairs: 18 to train, 2 held out, none in both, all used; the same seed splits alike, another seed not."""
    pairs = [(f"p{i}", "c", "r") for i in range(20)]
    train, held = data.split_pairs(pairs, 0)
    assert len(train) == 18 and len(held) == 2 and not set(train) & set(held) and set(train) | set(held) == set(pairs)
    assert data.split_pairs(pairs, 0) == (train, held)
    assert [data.split_pairs(pairs, s)[1] for s in range(1, 6)] != [held] * 5
    assert len(data.split_pairs(pairs[:5], 0)[1]) == 1  # at least one pair is held out


def test_evaluate_compares_the_policys_gold_with_pi_refs(tiny, tokenizer):
    """pi_ref's gold set prompt by prompt to -1, 1, 0, ...: the win rate is the share of prompts where the policy's
    sample beats pi_ref's on that prompt plus half the ties, read off the same samples drawn again with the same
    seed."""
    prompts = PROMPTS * 6
    torch.manual_seed(11)
    ref = models.sample(tiny, tokenizer, prompts[:3], 12, 64, "cpu")
    ev = experiment.held_out(prompts[:3], [" the plot was great ."] * 3, [" the plot was awful ."] * 3, tiny, tokenizer,
                             64, "cpu", ref, gold="careful", ref_gold=np.resize([-1.0, 1.0, 0.0], len(prompts)),
                             ref_length=1.0)
    ev.prompts = prompts
    pairs = easy_pairs(tokenizer)
    pairs.ref_logps = rddpo.all_logps(tiny, pairs.tokens, np.arange(16), "cpu")
    torch.manual_seed(5)
    res, _ = experiment.evaluate(sharpened(tiny), tiny, tokenizer, pairs, ev, 0.1, 12, 64, "cpu")
    torch.manual_seed(5)
    gold = np.array([task.gold_reward(t) for t in models.sample(sharpened(tiny), tokenizer, prompts, 12, 64,
                                                                          "cpu", "evaluate").texts])
    ref_gold = ev.ref_gold  # prompt by prompt: -1, 1, 0, -1, ...
    assert res["win_rate"] == pytest.approx(np.mean(gold > ref_gold) + 0.5 * np.mean(gold == ref_gold))
    assert res["gold_reward"] == pytest.approx(gold.mean()) and res["gold_ref"] == pytest.approx(ref_gold.mean())


def test_reward_model_stats_hand_values():
    """3 held-out pairs, rewards chosen (2, 0, 1) and rejected (1, 1, 1): right on the labels in pair 1 only (a tie
    is not a win) -> 1/3. gold (1, -1, 0.5) against (0, 1, 0.5): pair 3 ties in gold and is left out; the model
    agrees with gold on pair 1 (2 > 1, 1 > 0) and on pair 2 (0 < 1, -1 < 1) -> 2/2 = 1. lengths 1, 2, 3, 4, 5, 6
    words against rewards (2, 0, 1, 1, 1, 1): their pearson correlation. training rewards (3, 1) against (1, 2):
    mean |dr| = 1.5, which at beta 0.1 asks for a log-ratio margin of 1.5 / 0.1 = 15 nats."""
    chosen, rejected = ["a", "a b", "a b c"], ["a b c d", "a b c d e", "a b c d e f"]
    gold = {"a": 1.0, "a b": -1.0, "a b c": 0.5, "a b c d": 0.0, "a b c d e": 1.0, "a b c d e f": 0.5}
    out = report.reward_model_stats(torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 1.0]), torch.tensor([3.0, 1.0, 1.0, 2.0]),
                                          chosen, rejected, gold.get, beta=0.1)
    assert out["accuracy_labels"] == pytest.approx(1 / 3) and out["accuracy_gold"] == 1.0
    r, lengths = np.array([2, 0, 1, 1, 1, 1.0]), np.arange(1, 7)
    assert out["length_corr"] == pytest.approx(np.corrcoef(r, lengths)[0, 1]) and out["reward_diff"] == 1.5
    assert out["heldout_pairs"] == 3 and out["target_logratio"] == pytest.approx(15.0)
    assert "accuracy_gold" not in report.reward_model_stats(torch.ones(6), torch.ones(4), chosen, rejected)


# -----------------------------------------------------------------------------
# the reference's fine-tuning, the forward-KL pool and the unlabelled pairs


def test_a_model_folder_is_fine_tuned_on_the_task_once_and_then_read_from_the_cache(tmp_path, tiny, tokenizer,
                                                                                    monkeypatch):
    """--model FOLDER --sft-steps 3: the reference is the folder's model after 3 steps on the task's reviews (its
    weights moved), saved as reference-<folder>-B16-T64-S3 in --out (16 reviews a step); a second load reads that folder (fine-tuning is
    not called again), having let the folder's own model go first, and gives the same weights. --sft-steps 0 keeps the folder's model as it is, caching nothing."""
    folder = tmp_path / "my-model"
    tiny.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = experiment.Config(model=str(folder), sft_steps=3, out=str(tmp_path / "out"))
    tuned, _ = models.load_reference(cfg, "cpu")
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(tuned.state_dict()[key], tiny.state_dict()[key])
    cached = tmp_path / "out" / f"reference-{models.slug(str(folder))}-B16-T64-S3"
    assert (cached / "config.json").is_file()
    monkeypatch.setattr(models, "pretrain", lambda *a, **k: pytest.fail("fine-tuned twice"))
    base, freed, load, cache = [], [], models.load_pretrained, models.cached_model
    monkeypatch.setattr(models, "load_pretrained", lambda *a: (lambda m: base.append(weakref.ref(m[0])) or m)(load(*a)))
    monkeypatch.setattr(models, "cached_model", lambda *a: freed.append(base[0]() is None) or cache(*a))
    again, _ = models.load_reference(cfg, "cpu")
    assert freed == [True]  # the folder's model was let go before the cached copy loaded, not held beside it
    torch.testing.assert_close(again.state_dict()[key], tuned.state_dict()[key])
    plain, _ = models.load_reference(dataclasses.replace(cfg, sft_steps=0, out=str(tmp_path / "out0")), "cpu")
    assert torch.equal(plain.state_dict()[key], tiny.state_dict()[key]) and not (tmp_path / "out0").exists()


def data_file(tmp_path, n=20, name="pairs.jsonl"):
    """n pairs whose prompts and chosen responses name the pair's number in two words (i % 10, i // 10)."""
    words = ["blue", "harbor", "salt", "road", "quiet", "storm", "paper", "moon", "iron", "glass"]
    rows = [dict(prompt=f"{words[i % 10]} {words[i // 10]} :",
                 chosen=f" the cast was {words[i % 10]} . the plot was {words[i // 10]} .",
                 rejected=" the plot was dull .") for i in range(n)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_on_your_data_trains_on_the_seeds_training_chosen_responses_only(tmp_path, tiny, tokenizer, monkeypatch):
    """--model FOLDER --data --sft-steps 4: for each seed, fine_tune sees exactly the chosen responses of that seed's
    training split (prompts masked out), none of its held-out pairs; pi_ref's weights move, the loss on those
    responses falls, and what it did is in the run's data records."""
    folder, path = tmp_path / "my-model", data_file(tmp_path)
    tiny.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    seen, fine_tune = {}, models.fine_tune
    def spy(model, tokens, steps, lr, batch_size, seed, device, micro_batch=None):
        seen[seed] = {tokenizer.decode(ids[resp.bool()][:-1])
                      for ids, resp in zip(tokens.input_ids, tokens.response_mask)}
        assert all(tokenizer.decode(ids[resp.bool() == 0][:m.sum() - resp.sum()]).endswith(":")
                   for ids, resp, m in zip(tokens.input_ids, tokens.response_mask, tokens.attention_mask))
        return fine_tune(model, tokens, steps, lr, batch_size, seed, device, micro_batch)
    monkeypatch.setattr(models, "fine_tune", spy)
    cfg = experiment.Config(model=str(folder), data=str(path), methods="dpo", sft_steps=4, steps=1, seeds=[0, 1],
                       batch_size=4, eval_points=1, max_new_tokens=4, out=str(tmp_path / "out"))
    results, _ = experiment.run(dataclasses.replace(cfg, lr=3e-5))
    assert results["config"]["lr"] == 3e-5
    pairs = data.read_pairs(str(path))
    for seed in (0, 1):
        train, held = data.split_pairs(pairs, seed)
        assert seen[seed] == {tokenizer.decode(tokenizer(c).input_ids) for _, c, _ in train}
        assert not seen[seed] & {tokenizer.decode(tokenizer(c).input_ids) for _, c, _ in held}
    assert seen[0] != seen[1]
    for d in results["data"]:
        sft = d["sft"]
        assert sft["steps"] == 4 and sft["pairs"] == 18 and sft["heldout_pairs"] == 2
        assert sft["lr"] == pytest.approx(1e-4 * 64 / 32)  # the model's default rate (32 wide), not --lr's
        assert sft["loss_after"] < sft["loss_before"] and sft["heldout_logp_after"] > sft["heldout_logp_before"]


def test_fine_tune_learns_the_responses_only_the_prompts_and_padding_are_masked_out_of_the_loss(tiny, tokenizer):
    """one step over all rows: the labels given to the model are the token ids on the response (and its eos) and
    -100 on the prompt and the padding, row by row; the weights move."""
    tokens = rddpo.tokenize(tokenizer, ["blue harbor :", "the salt road :"], [" the plot was great .", " dull ."], 64)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(tiny)

        def forward(self, input_ids, attention_mask, labels):
            seen.append((input_ids, labels))
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    model = Recorder()
    models.fine_tune(model, tokens, 1, 1e-3, 2, 0, "cpu")
    (ids, labels), = seen
    want = {tuple(torch.where(r.bool(), i, -100).tolist()) for i, r in zip(tokens.input_ids, tokens.response_mask)}
    assert {tuple(row.tolist()) for row in labels} == want and {tuple(row.tolist()) for row in ids} == {
        tuple(i.tolist()) for i in tokens.input_ids}
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(model.inner.state_dict()[key], tiny.state_dict()[key])


def test_the_default_learning_rate_is_the_tiny_models_and_scales_with_one_over_a_models_width(tiny):
    """--lr unset: 1e-4 for the tiny model whatever its width; for a --model, 1e-4 x 64 / hidden size (a llama's
    hidden_size or a gpt-2's n_embd); --lr given wins."""
    from transformers import LlamaConfig, LlamaForCausalLM
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=128, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2))
    assert models.learning_rate(experiment.Config(), tiny) == 1e-4  # tiny is 32 wide here: still 1e-4
    assert models.learning_rate(experiment.Config(model="some/folder"), llama) == pytest.approx(5e-5)
    assert models.learning_rate(experiment.Config(model="gpt2"), tiny) == pytest.approx(2e-4)  # n_embd 32
    assert models.learning_rate(experiment.Config(model="gpt2", lr=3e-6), tiny) == 3e-6


def test_sft_on_your_data_is_cached_under_a_key_of_model_data_seed_and_settings(tmp_path, tiny, tokenizer,
                                                                                 monkeypatch):
    """the same model, data, seed and settings: one folder, fine-tuned once (a second call reads it back, the same
    weights, and the same again in a fresh --out whatever the global seed); another data file content, seed, step
    count, --chat-template, batch size, --max-length or --dtype: another folder. without --sft-steps --data keeps the
    model as it is."""
    folder, path = tmp_path / "my-model", data_file(tmp_path)
    tiny.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = experiment.Config(model=str(folder), data=str(path), sft_steps=2, batch_size=4, out=str(tmp_path / "out"))
    base, _ = models.load_reference(cfg, "cpu")
    pairs = data.read_pairs(str(path))
    first, _ = models.data_reference(base, tokenizer, cfg, pairs, 0, "cpu")
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(first.state_dict()[key], tiny.state_dict()[key])
    assert torch.equal(base.state_dict()[key], tiny.state_dict()[key])  # the base itself is not trained
    fresh = []
    for n, noise in enumerate((1, 2)):  # whatever ran before in the process (here: another global seed), the same
        torch.manual_seed(noise)
        fresh.append(models.data_reference(base, tokenizer, dataclasses.replace(cfg, out=str(tmp_path / f"o{n}")),
                                                 pairs, 0, "cpu", )[0])
    assert torch.equal(fresh[0].state_dict()[key], fresh[1].state_dict()[key])
    monkeypatch.setattr(models, "fine_tune", lambda *a, **k: pytest.fail("fine-tuned twice"))
    again, _ = models.data_reference(base, tokenizer, cfg, pairs, 0, "cpu")
    assert torch.equal(again.state_dict()[key], first.state_dict()[key])
    other = data_file(tmp_path, n=21, name="other.jsonl")
    same_name = tmp_path / "copy.jsonl"
    same_name.write_bytes(path.read_bytes())
    keys = {models.sft_cache(c, seed, 1e-5) for c, seed in [
        (cfg, 0), (cfg, 1), (dataclasses.replace(cfg, data=str(other)), 0), (dataclasses.replace(cfg, sft_steps=3), 0),
        (dataclasses.replace(cfg, chat_template=True), 0), (dataclasses.replace(cfg, batch_size=8), 0),
        (dataclasses.replace(cfg, max_length=80), 0), (dataclasses.replace(cfg, dtype="bfloat16"), 0)]}
    assert len(keys) == 8
    assert models.sft_cache(dataclasses.replace(cfg, data=str(same_name)), 0, 1e-5) == models.sft_cache(cfg, 0, 1e-5)
    assert models.sft_cache(cfg, 0, 2e-5) != models.sft_cache(cfg, 0, 1e-5)
    assert models.sft_steps(dataclasses.replace(cfg, sft_steps=None)) == 0
    assert models.sft_steps(experiment.Config()) == 600 and models.sft_steps(experiment.Config(quick=True)) == 150


def test_slug_makes_one_folder_name_of_a_model_name_or_path():
    assert models.slug("gpt2") == "gpt2"
    assert models.slug("./models/my lm/") == "models-my-lm"
    assert models.slug("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB-SmolLM2-135M"


def test_the_kl_pool_is_steps_times_batch_samples_of_pi_ref_with_their_log_probs(tiny, tokenizer):
    """steps 2 x batch 3 = 6 responses drawn from pi_ref on the prompts in turn; their stored log pi_ref is the
    reference's log-prob of exactly those ids (checked one token at a time)."""
    cfg = experiment.Config(steps=2, batch_size=3, max_new_tokens=8)
    pool, ref_logps = experiment.kl_pool(tiny, tokenizer, PROMPTS[:2], cfg, seed=0, device="cpu")
    assert pool.input_ids.shape[0] == 6 and ref_logps.shape == (6,)
    for i in range(6):
        ids = pool.input_ids[i][pool.attention_mask[i].bool()].tolist()
        n_prompt = len(tokenizer(PROMPTS[i % 2], add_special_tokens=False).input_ids)
        assert ids[:n_prompt] == tokenizer(PROMPTS[i % 2], add_special_tokens=False).input_ids
        assert ref_logps[i].item() == pytest.approx(ids_logp(tiny, ids[:n_prompt], ids[n_prompt:]), rel=1e-5)


def test_unlabelled_pairs_are_drawn_from_pi_ref_scored_and_never_seen_by_a_reward_model(tiny, tokenizer, monkeypatch):
    """--unlabeled 6 beside 10 labelled pairs: 16 pairs, the first 10 labelled; both reward-model trainings index
    only pairs 0-9; every pair, labelled or not, has a plain and a family score; results.json's data says 10 + 6."""
    trained_on = []
    real = rddpo.train_reward_model
    def spy(reference, pairs, pair_idx, *args, **kw):
        trained_on.append(np.asarray(pair_idx))
        return real(reference, pairs, pair_idx, *args, **kw)
    monkeypatch.setattr(rddpo, "train_reward_model", spy)
    cfg = experiment.Config(n_pairs=10, n_eval=4, unlabeled=6, methods="d-dpo", rm_steps=2, batch_size=4, ensemble=2,
                       max_new_tokens=8)
    pairs, ev, info, _ = experiment.prepare(tiny, tokenizer, cfg, 0.5, 0, "cpu", None)
    assert pairs.labelled == 10 and len(pairs.keep) == 16 and info["pairs"] == 10 and info["unlabeled"] == 6
    assert len(trained_on) == 3 and all(idx.max() < 10 for idx in trained_on)
    assert pairs.rm_plain.shape == (32,) and pairs.rm_family.shape == (2, 32) and pairs.pool is None


def test_chat_template_wraps_each_prompt_as_the_users_turn_and_a_model_without_one_is_an_error(tmp_path, tokenizer):
    """a tokenizer whose template writes 'review <content>' and, for the reply, ' :': the pair's prompt becomes
    'review blue harbor :', its responses unchanged; without a template, one clear error."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.save_pretrained(tmp_path / "plain")
    tokenizer.chat_template = ("{% for m in messages %}review {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} :{% endif %}")
    tokenizer.save_pretrained(tmp_path / "chat")
    pairs = [("blue harbor", " the plot was great .", " the plot was dull .")]
    assert data.with_chat_template(pairs, str(tmp_path / "chat")) == [("review blue harbor :", *pairs[0][1:])]
    with pytest.raises(cli.UsageError, match="has no chat template"):
        data.with_chat_template(pairs, str(tmp_path / "plain"))


def test_a_chat_template_run_prints_the_users_question_not_the_templates_lines(tmp_path, tokenizer, capsys):
    """a template that writes a system line before the user's turn and ' assistant :' after it: the printed
    samples show 'blue harbor', the question, and no template text; a prompt the template did not write, or a
    model whose tokenizer is gone, prints as it is."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = ("system : be brief . {% for m in messages %}user : {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} assistant :{% endif %}")
    tokenizer.save_pretrained(tmp_path / "chat")
    wrapped = data.with_chat_template([("blue harbor", " a", " b")], str(tmp_path / "chat"))[0][0]
    assert wrapped == "system : be brief . user : blue harbor assistant :"
    question = data.users_question(str(tmp_path / "chat"))
    assert question(wrapped) == "blue harbor" and question("the salt road") == "the salt road"
    assert data.users_question(str(tmp_path / "gone"))(wrapped) == wrapped
    import test_report
    results, samples = test_report.fake_results(user_data=True)
    samples = [dict(s, prompt=wrapped) for s in samples]
    results["config"].update(model=str(tmp_path / "chat"), chat_template=True)
    report.print_summary(results, samples, question)  # as experiment.run has the record print it
    shown = capsys.readouterr().out.split("samples, ")[1].splitlines()
    assert shown[1] == "  blue harbor" and not any("system" in line or "assistant" in line for line in shown)
    results["config"]["chat_template"] = False
    report.print_summary(results, samples)
    assert capsys.readouterr().out.split("samples, ")[1].splitlines()[1] == "  " + wrapped


def test_the_pool_and_the_unlabelled_pairs_are_sampled_only_on_prompts_that_leave_room(tiny, tokenizer):
    """your data with prompts that fill --max-length: they are skipped as pairs, and the pool and the unlabelled pairs
    are drawn on the other prompts instead of failing to sample a response for them."""
    rows = [(PROMPTS[i % 3], " the plot was great .", " the plot was dull .") for i in range(20)]
    rows[:5] = [(" the" * 70, c, r) for _, c, r in rows[:5]]  # 70 tokens: no room left in 64
    cfg = experiment.Config(data="pairs.jsonl", methods="e-dpo", unlabeled=4, steps=2, batch_size=3, rm_steps=1,
                            ensemble=2, max_new_tokens=6)
    pairs, _, info, _ = experiment.prepare(tiny, tokenizer, cfg, None, 0, "cpu", rows)
    assert pairs.skipped >= 1 and info["unlabeled"] == 4 and pairs.pool.input_ids.shape[0] == 6
    assert (pairs.pool.response_mask.sum(-1) >= 1).all()


@pytest.mark.parametrize("lora", [0, 4])
def test_a_saved_policy_reloads_with_from_pretrained_to_the_policy_that_ended_training(tmp_path, monkeypatch, capsys,
                                                                                      lora):
    """--save-policy on the tiny model, every weight trained or LoRA adapters (--lora 4), the reference fine-tuned and
    cached in a relative --out by this very run: the policy folder reloads, from another working directory, with
    transformers' AutoModelForCausalLM.from_pretrained (a whole model) or peft's AutoPeftModelForCausalLM (adapters,
    on the pi_ref that their adapter_config.json names: the cached reference's absolute folder), and gives the
    log-probs of the training pairs that the policy train_policy returned gave, to 1e-5, away from pi_ref's; the
    run's last line names the folder and that call."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM
    ended, real = {}, experiment.train_policy
    def train_policy(reference, pairs, *args, **kw):  # what the run saves next: the policy that ended training
        policy, shares = real(reference, pairs, *args, **kw)
        rows = np.arange(2 * len(pairs.keep))
        ended.update(tokens=pairs.tokens, rows=rows, ref=pairs.ref_logps, logps=rddpo.all_logps(policy, pairs.tokens,
                                                                                                 rows, "cpu"))
        return policy, shares
    monkeypatch.setattr(experiment, "train_policy", train_policy)
    monkeypatch.chdir(tmp_path)
    cfg = experiment.Config(out="runs", methods="dpo", n_pairs=8, n_eval=2, steps=3, batch_size=4, eval_points=1,
                            sft_steps=3, max_new_tokens=8, lora=lora, lr=1e-2, save_policy=True, device="cpu")
    _, run_dir = experiment.run(cfg)
    folder = os.path.join(os.path.abspath(run_dir), "policy-dpo-bias0.5-seed0")
    call = "peft.AutoPeftModelForCausalLM" if lora else "transformers.AutoModelForCausalLM"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        f"policies saved with their tokenizers in {run_dir}/policy-*; load one with {call}.from_pretrained("
        f"{os.path.join(run_dir, 'policy-dpo-bias0.5-seed0')!r})")
    base, = (tmp_path / "runs").glob("reference-*")
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")
    if lora:
        with open(os.path.join(folder, "adapter_config.json")) as fh:
            assert json.load(fh)["base_model_name_or_path"] == str(base)  # absolute, so found from anywhere
    loaded = (AutoPeftModelForCausalLM if lora else AutoModelForCausalLM).from_pretrained(folder)
    torch.testing.assert_close(rddpo.all_logps(loaded, ended["tokens"], ended["rows"], "cpu"), ended["logps"],
                               atol=1e-5, rtol=0)
    assert (ended["logps"] - ended["ref"]).abs().max() > 1e-2
