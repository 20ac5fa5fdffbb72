"""tests of records.py's run records, report.py's paired statistics and printed summary, samples, and figures.py's
figures, on synthetic results shaped as experiment.py writes them (no model is trained). run with `pytest -q test_report.py` (seconds)."""
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.image
import numpy as np
import pytest

from harness import cli, figures, records, report

METHODS = ["dpo", "ipo", "d-dpo", "e-dpo", "p-dpo"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root


# -----------------------------------------------------------------------------
# synthetic results, with every field of the contract


def fake_run(bias, seed, i, method, steps, user_data):
    """one record: checkpoints at steps/3, 2 steps/3 and steps; the record's numbers are the last checkpoint's."""
    checkpoints = []
    for step in (steps // 3, 2 * steps // 3, steps):
        kl = 0.02 * (i + 1) ** 2 * step * (1 + 0.1 * seed)  # from 0.2 to 15 nats: spans two decades
        c = dict(step=step, kl=kl, kl_per_token=kl / 12, length=10 + bias * step / 5)
        if user_data:
            c["heldout_accuracy"] = 0.5 + 0.01 * step / (i + 1)
        else:
            c.update(gold_reward=0.1 + 0.02 * step / (i + 1) - 0.1 * bias,
                     win_rate=0.5 + 0.01 * step / (i + 1) - seed / 100)
        checkpoints.append(c)
    r = dict(bias=bias, seed=seed, method=method, train_seconds=1.0, tokens=12.0, logps_chosen_change=-1.0 + i,
             logps_rejected_change=-2.0, margin_mean=0.5, margin_max=2.0, checkpoints=checkpoints,
             **{k: v for k, v in checkpoints[-1].items() if k != "step"})
    if not user_data:
        r.update(gold_ref=0.1, length_ref=10.0)
    if method == "e-dpo":
        r["member_min_share"] = [0.1, 0.2, 0.3, 0.4]
    return r


def fake_results(biases=(0.0, 0.5), seeds=(0, 1, 2), user_data=False, steps=30):
    """results.json as rddpo.py writes it: runs, data, reward_models, summary, paired and curves; and samples."""
    runs, reward_models, samples, curves = [], [], [], {}
    for bias in biases:
        for seed in seeds:
            for i, method in enumerate(METHODS):
                runs.append(fake_run(bias, seed, i, method, steps, user_data))
                if seed == seeds[0]:
                    curves.setdefault(str(bias), {})[method] = [
                        {"bias": bias, "seed": seed, "method": method, "step": s, "loss": 0.69 - s / 100,
                         "rewards/margins": s / 50 * (i + 1), "logps/chosen_change": -s / 10,
                         "logps/rejected_change": -s / 5}
                        for s in (1, steps // 2, steps)]
            for k, model in enumerate(["plain"] + [f"member {j}" for j in range(1, 5)]):
                reward_models.append(dict(bias=bias, seed=seed, model=model, share=None if k == 0 else (k - 1) / 3,
                                          accuracy_gold=None if user_data else 0.6 + 0.05 * k - 0.01 * seed,
                                          accuracy_labels=0.55 + 0.02 * k, length_corr=0.8 - 0.3 * k + 0.02 * seed,
                                          reward_diff=1.0 + k, heldout_pairs=32))
            for p in range(3):
                for policy in ["pi_ref"] + METHODS:
                    samples.append(dict(bias=bias, seed=seed, prompt=f"my review of film {p} :", policy=policy,
                                        response=f" the plot was great . ({policy}, prompt {p})", tokens=9,
                                        cut_off=False, length=7, gold=None if user_data else 0.5,
                                        logratio=0.0 if policy == "pi_ref" else 1.5))
    config = dict(model="tiny", seeds=list(seeds), steps=steps, beta=0.1, data="my/pairs.jsonl" if user_data else "",
                  methods=",".join(METHODS))
    results = dict(config=config, device="cpu", runs=runs, reward_models=reward_models, curves=curves,
                   data=[dict(bias=b, seed=s, pairs=64, heldout_pairs=32) for b in biases for s in seeds],
                   summary=report.summarize(runs), paired=report.paired_comparisons(runs))
    return results, samples


def rec(method, seed, value, bias=0.5, key="win_rate"):
    return {"bias": bias, "seed": seed, "method": method, key: value}


# -----------------------------------------------------------------------------
# paired statistics


def test_paired_mean_and_interval_are_the_hand_computed_t_interval():
    """per-seed differences 1, 2, 3: mean 2, sample sd 1, t(2) = 4.303, so 2 ± 4.303 / sqrt(3) = 2 ± 2.4843."""
    records = [rec("dpo", 0, 0.1), rec("dpo", 1, 0.2), rec("dpo", 2, 0.3),
               rec("ipo", 0, 1.1), rec("ipo", 1, 2.2), rec("ipo", 2, 3.3)]
    [p] = report.paired(records, "win_rate", "dpo")
    assert (p["bias"], p["method"], p["base"], p["key"], p["seeds"]) == (0.5, "ipo", "dpo", "win_rate", [0, 1, 2])
    assert p["diffs"] == pytest.approx([1, 2, 3])
    assert p["mean"] == pytest.approx(2)
    assert (p["low"], p["high"]) == pytest.approx((2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5))


def test_paired_with_one_seed_gives_the_difference_and_no_interval():
    """one seed: the difference 0.7 - 0.4 = 0.3, and None for both ends (no spread to estimate)."""
    [p] = report.paired([rec("dpo", 3, 0.4), rec("e-dpo", 3, 0.7)], "win_rate", "dpo")
    assert p["seeds"] == [3] and p["mean"] == pytest.approx(0.3)
    assert p["low"] is None and p["high"] is None


def test_paired_pairs_records_by_seed_whatever_their_order():
    """dpo 0, 10, 20 and ipo 1, 12, 23 at seeds 0, 1, 2: differences 1, 2, 3 in every order of the records
    (pairing by position would mix seeds: 12 - 0, ...); two biases are never mixed either."""
    records = [rec("dpo", s, 10.0 * s, bias) for s in range(3) for bias in (0.0, 1.0)]
    records += [rec("ipo", s, 11.0 * s + 1, 0.0) for s in range(3)]
    records += [rec("ipo", s, 10.0 * s + 5, 1.0) for s in range(3)]
    want = {(p["bias"], p["method"]): p for p in report.paired(records, "win_rate", "dpo")}
    assert want[0.0, "ipo"]["diffs"] == pytest.approx([1, 2, 3])
    assert want[1.0, "ipo"]["diffs"] == pytest.approx([5, 5, 5])
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(records)
        got = {(p["bias"], p["method"]): p for p in report.paired(records, "win_rate", "dpo")}
        assert got == want


def test_paired_leaves_out_a_seed_whose_base_is_missing():
    """dpo has no seed 1: ipo's seed 1 is dropped, diffs 1 and 3 remain; mean 2, sd sqrt(2), t(1) = 12.706,
    so the half-width is 12.706 sqrt(2) / sqrt(2) = 12.706. a method never paired is left out."""
    records = [rec("dpo", 0, 0.0), rec("dpo", 2, 0.0), rec("ipo", 0, 1.0), rec("ipo", 1, 99.0), rec("ipo", 2, 3.0),
               rec("p-dpo", 1, 5.0)]
    [p] = report.paired(records, "win_rate", "dpo")
    assert p["method"] == "ipo" and p["seeds"] == [0, 2] and p["diffs"] == pytest.approx([1, 3])
    assert (p["low"], p["high"]) == pytest.approx((2 - 12.706, 2 + 12.706))


def test_paired_skips_records_without_the_key():
    """a record without the key (an older run, or user data without win_rate) is not paired, and does not raise."""
    records = [rec("dpo", 0, 0.5), rec("ipo", 0, 0.6), {"bias": 0.5, "seed": 1, "method": "dpo"},
               rec("ipo", 1, None)]
    [p] = report.paired(records, "win_rate", "dpo")
    assert p["seeds"] == [0] and p["mean"] == pytest.approx(0.1)


@pytest.mark.parametrize("n, t", [(31, 2.042), (32, 1.96 + (1.96 ** 3 + 1.96) / (4 * 31)), (121, 1.96 + (1.96 ** 3 + 1.96) / (4 * 120))])
def test_interval_uses_t_up_to_30_degrees_of_freedom_then_its_normal_approximation(n, t):
    """the half-width over the standard error is t(n - 1): 2.042 at 30 degrees of freedom from the table; beyond,
    z + (z^3 + z) / (4 df), 2.0365 at 31 (t: 2.040) and 1.9798 at 120 (t: 1.980)."""
    values = [float(v) for v in np.random.default_rng(n).normal(size=n)]
    m = report.mean_interval(values)
    assert (m["high"] - m["mean"]) / (np.std(values, ddof=1) / np.sqrt(n)) == pytest.approx(t)


def test_paired_comparisons_are_each_method_against_dpo_and_e_dpo_against_d_dpo():
    """the standard comparisons, for every key the records hold: user data has held-out accuracy, no win rate."""
    results, _ = fake_results()
    pairs = {(p["method"], p["base"]) for p in results["paired"] if p["key"] == "win_rate"}
    assert pairs == {("ipo", "dpo"), ("d-dpo", "dpo"), ("e-dpo", "dpo"), ("p-dpo", "dpo"), ("e-dpo", "d-dpo")}
    assert {p["key"] for p in results["paired"]} == {"win_rate", "gold_reward", "length", "kl"}
    user, _ = fake_results(user_data=True)
    assert {p["key"] for p in user["paired"]} == {"heldout_accuracy", "length", "kl"}


def test_interval_text_stars_only_intervals_that_exclude_zero():
    """[0.1, 0.3] and [-0.3, -0.1] exclude 0 (star); [-0.1, 0.3] does not; one seed says so."""
    text = report.interval_text
    assert text(dict(mean=0.2, low=0.1, high=0.3)).endswith("*")
    assert text(dict(mean=-0.2, low=-0.3, high=-0.1)).endswith("*")
    assert not text(dict(mean=0.1, low=-0.1, high=0.3)).endswith("*")
    assert "one seed" in text(dict(mean=0.1, low=None, high=None))


# -----------------------------------------------------------------------------
# run records


def test_run_info_names_versions_the_command_and_an_iso_start():
    """versions from the installed packages; the command is `python PROGRAM ARGS`, quoted as a shell needs; the
    start is ISO 8601 local time with its offset, to the second; no command line (argv None): command None."""
    started = time.time() - 5
    info = records.run_info(["--quick", "--out", "my runs"], started)
    assert info["command"] == "python rddpo.py --quick --out 'my runs'"
    assert info["python"] == platform.python_version() and info["numpy"] == np.__version__
    assert info["torch"] and info["transformers"] and info["platform"]
    when = datetime.datetime.fromisoformat(info["started"])
    assert when.tzinfo is not None and abs(when.timestamp() - started) < 1
    assert records.run_info(["--steps", "4"], started, "tools/bench.py")["command"] == "python tools/bench.py --steps 4"
    assert records.run_info(None, started)["command"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_run_info_gives_this_checkouts_commit():
    """in this checkout: the 40-hex commit of HEAD, and a bool for dirty."""
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    info = records.run_info([], time.time())
    assert info["git_commit"] == head.stdout.strip() and isinstance(info["git_dirty"], bool)


def test_run_info_without_git_or_outside_a_checkout_gives_none(monkeypatch, tmp_path):
    """git missing (the call raises) or a folder that is no checkout: git_commit and git_dirty are None, no error."""
    assert records.git_state(str(tmp_path)) == dict(git_commit=None, git_dirty=None)
    def missing(*args, **kw):
        raise FileNotFoundError("git")
    monkeypatch.setattr(records.subprocess, "run", missing)
    info = records.run_info([], time.time())
    assert info["git_commit"] is None and info["git_dirty"] is None


def read_results(record):
    with open(record.path) as fh:
        return json.load(fh)


def new_record(tmp_path, started=None):
    started = time.time() if started is None else started
    return records.RunRecord(str(tmp_path), {"steps": 30}, "cpu", (0.5, 0), records.run_info([], started), started)


def test_run_record_says_running_during_the_run_and_finished_after_with_the_wall_time_from_started(tmp_path):
    """on disk while the run is on: status running, no end. after: finished, an end, and the wall time counted
    from `started` (100 s before the record was made: the reference's pretraining), not from the record."""
    record = new_record(tmp_path, started=time.time() - 100)
    with record:
        during = read_results(record)
        record.results["runs"].append(fake_run(0.5, 0, 0, "dpo", 30, False))
    assert during["run"]["status"] == "running" and during["run"]["ended"] is None and during["runs"] == []
    after = read_results(record)["run"]
    assert after["status"] == "finished" and after["error"] is None and after["command"] == "python rddpo.py"
    assert datetime.datetime.fromisoformat(after["ended"]) >= datetime.datetime.fromisoformat(after["started"])
    assert 100 <= after["wall_seconds"] < 160


def test_run_record_failed_keeps_the_finished_runs_and_the_errors_first_line(tmp_path):
    """an error mid-run goes on up unchanged; results.json says failed, with the error's one line, and keeps the
    record made before it, with its summary."""
    record = new_record(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        with record:
            record.results["runs"].append(fake_run(0.5, 0, 0, "dpo", 30, False))
            raise ValueError("boom: the loss\nsecond line")
    saved = read_results(record)
    assert saved["run"]["status"] == "failed" and saved["run"]["error"] == "ValueError: boom: the loss"
    assert [r["method"] for r in saved["runs"]] == ["dpo"] and saved["summary"][0]["method"] == "dpo"
    assert saved["run"]["wall_seconds"] is not None


def test_run_record_ctrl_c_is_interrupted_and_raises_interrupted_naming_the_file(tmp_path):
    """ctrl-c: results.json says interrupted, keeps the finished runs, and Interrupted names its path."""
    record = new_record(tmp_path)
    with pytest.raises(cli.Interrupted, match="1 finished method runs kept in .*results.json"):
        with record:
            record.results["runs"].append(fake_run(0.5, 0, 0, "dpo", 30, False))
            raise KeyboardInterrupt
    saved = read_results(record)
    assert saved["run"]["status"] == "interrupted" and saved["run"]["error"] is None and len(saved["runs"]) == 1


def test_run_record_keeps_curves_for_every_bias_at_the_first_seed(tmp_path, capsys):
    """logged rows of biases 0 and 0.5, seeds 0 and 1: curves keeps both biases, seed 0 only, per method, and
    results.json holds the same {bias: {method: rows}}."""
    record = new_record(tmp_path)
    with record:
        for bias in (0.5, 0.0):
            for seed in (0, 1):
                for step in (1, 10):
                    record.log({"bias": bias, "seed": seed, "method": "dpo", "step": step, "loss": 0.6,
                                "rewards/margins": 0.1, "rewards/accuracies": 0.5, "logps/chosen_change": -0.1,
                                "logps/rejected_change": -0.2})
    assert list(record.curves) == ["0.5", "0.0"]
    assert all(r["seed"] == 0 for rows in record.curves.values() for r in rows["dpo"])
    assert [r["step"] for r in record.curves["0.0"]["dpo"]] == [1, 10]
    assert read_results(record)["curves"] == record.curves
    with open(os.path.join(record.dir, "metrics.jsonl")) as fh:
        assert len(fh.readlines()) == 8  # every row is logged, whatever its seed


def test_finish_prints_the_wall_time_with_pretraining_and_the_samples(tmp_path, capsys):
    """a run started an hour ago (pretraining) ends with `done in 3600 s ... pretraining ...`, after the samples."""
    results, samples = fake_results(biases=(0.5,), seeds=(0,))
    record = new_record(tmp_path, started=time.time() - 3600)
    with record:
        record.results.update(reward_models=results["reward_models"])
        for run in results["runs"]:
            record.add(run, [s for s in samples if s["policy"] == run["method"]] if run is results["runs"][0] else [])
        record.samples += [s for s in samples if s["policy"] != results["runs"][0]["method"]]
    record.finish(METHODS)
    assert records.read_samples(os.path.join(record.dir, "samples.jsonl"))  # add() wrote them
    out = capsys.readouterr().out
    done = out.strip().splitlines()[-1]
    assert done.startswith("done in ") and "pretraining" in done
    assert 3600 <= int(done.split()[2]) < 3660
    assert "samples, bias 0.50 seed 0" in out


# -----------------------------------------------------------------------------
# the printed summary and samples


def test_printed_summary_has_the_paired_table_only_with_two_or_more_seeds(capsys):
    """3 seeds: the paired table with a row per comparison, e-dpo - d-dpo among them; 1 seed: one line saying
    paired intervals need 2+ seeds, and no table."""
    results, samples = fake_results(seeds=(0, 1, 2))
    report.print_summary(results, samples)
    out = capsys.readouterr().out
    assert "paired differences, method - base" in out and "e-dpo - d-dpo" in out and "ipo - dpo" in out
    assert sum(" - dpo" in line or " - d-dpo" in line for line in out.splitlines()) == 2 * 5  # 2 biases, 5 pairs
    assert "need 2+ seeds" not in out
    results, samples = fake_results(seeds=(0,))
    report.print_summary(results, samples)
    out = capsys.readouterr().out
    assert "need 2+ seeds" in out and "e-dpo - d-dpo" not in out


def test_printed_summary_shows_reward_models_member_shares_and_samples(capsys):
    """after the table: a reward-model row per (bias, model), averaged over seeds (plain at bias 0: acc gold mean
    of 0.60, 0.59, 0.58 = 0.590), e-dpo's member shares per bias, and the samples."""
    results, samples = fake_results()
    report.print_summary(results, samples)
    lines = capsys.readouterr().out.splitlines()
    plain = next(line for line in lines if line.split()[:2] == ["0.00", "plain"])
    assert plain.split()[3] == "0.590"
    assert sum(line.split()[1:2] == ["member"] and len(line.split()) == 9 for line in lines) == 2 * 4
    assert any("member 1 0.10  member 2 0.20  member 3 0.30  member 4 0.40" in line for line in lines)
    assert any(line.startswith("samples, bias 0.00 seed 0") for line in lines)


def test_reward_model_summary_averages_over_seeds_and_keeps_none_without_gold():
    """accuracy_gold 0.6, 0.59, 0.58 over seeds -> 0.59 with sd 0.01; on user data accuracy_gold stays None."""
    results, _ = fake_results()
    rows = report.reward_model_summary(results["reward_models"])
    plain = next(r for r in rows if (r["bias"], r["model"]) == (0.0, "plain"))
    assert plain["seeds"] == 3 and plain["accuracy_gold"] == pytest.approx(0.59)
    assert plain["accuracy_gold_std"] == pytest.approx(0.01) and plain["share"] is None
    user, _ = fake_results(user_data=True)
    assert all(r["accuracy_gold"] is None for r in report.reward_model_summary(user["reward_models"]))


def test_write_samples_then_read_gives_the_same_rows(tmp_path):
    """one json object per line, strings with newlines and non-ascii text included, round trip exact."""
    _, samples = fake_results(biases=(0.5,), seeds=(0,))
    samples[0]["response"] = " the plot was great .\nthe ending — quiet ."
    path = str(tmp_path / "samples.jsonl")
    records.write_samples(path, samples)
    with open(path) as fh:
        assert len(fh.readlines()) == len(samples)
    assert records.read_samples(path) == samples


def test_print_samples_shows_the_first_bias_and_seed_pi_ref_first_and_cuts_long_responses(capsys):
    """rows of two biases, the methods before pi_ref: only bias 0.00 seed 0 is shown, its first 2 prompts, pi_ref's
    line first; a 500-character response is cut to about 100 characters with '...'; a cut-off one says so."""
    _, samples = fake_results(biases=(0.0, 0.5), seeds=(0, 1))
    samples = [r for r in samples if r["policy"] != "pi_ref"] + [r for r in samples if r["policy"] == "pi_ref"]
    first = next(r for r in samples if r["policy"] == "dpo")
    first.update(response=" very long" * 50, cut_off=True)
    report.print_samples(samples)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("samples, bias 0.00 seed 0")
    prompts = [line.strip() for line in lines if line.startswith("  ") and not line.startswith("    ")]
    assert prompts == ["my review of film 0 :", "my review of film 1 :"]
    assert lines[2].split()[0] == "pi_ref" and len(lines) == 1 + 2 * (1 + 1 + len(METHODS))
    long = next(line for line in lines if "very long" in line)
    assert "..." in long and long.endswith("[cut off]") and len(long) < 200
    assert "(ipo, prompt 0)" in " ".join(lines) and "seed 1" not in " ".join(lines)


def test_print_samples_keeps_a_prompt_that_comes_twice_as_two_prompts(capsys):
    """held-out prompts may repeat: each policy's k-th row goes with the k-th prompt, so the same prompt text twice
    gives two blocks of one row per policy, not one block of two rows each."""
    rows = [dict(bias=0.5, seed=0, prompt="same :", policy=policy, response=f" {policy} {k}", tokens=2, cut_off=False,
                 length=2, gold=None, logratio=0.0) for policy in ("pi_ref", "dpo") for k in range(2)]
    report.print_samples(rows)
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[-1] for line in lines] == [":", "0", "0", ":", "1", "1"]
    assert "gold" not in "\n".join(lines) and " len " in lines[1]  # no gold reward anywhere: no gold column


# -----------------------------------------------------------------------------
# figures


def assert_figure(path):
    """written, more than a blank canvas: many kilobytes, and more than one colour."""
    assert os.path.getsize(path) > 15_000, path
    pixels = matplotlib.image.imread(path)
    assert pixels[..., :3].std() > 0.05, path


def test_a_sweep_writes_every_figure(tmp_path):
    """two biases, three seeds: curves, comparison, gold_vs_kl, reward_models and sweep, each non-trivial."""
    results, _ = fake_results()
    figures.plot(results, str(tmp_path), results["curves"], METHODS)
    for name in ("curves.png", "comparison.png", "gold_vs_kl.png", "reward_models.png", "sweep.png"):
        assert_figure(tmp_path / name)


def test_a_single_bias_run_writes_every_figure_but_the_sweep(tmp_path):
    """one bias, one seed: no sweep.png; the others are written."""
    results, _ = fake_results(biases=(0.5,), seeds=(0,))
    figures.plot(results, str(tmp_path), None, METHODS)
    for name in ("curves.png", "comparison.png", "gold_vs_kl.png", "reward_models.png"):
        assert_figure(tmp_path / name)
    assert not os.path.exists(tmp_path / "sweep.png")


def test_a_user_data_run_writes_its_figures_without_gold(tmp_path, capsys):
    """your own data: no gold reward or win rate, held-out accuracy instead; the figures and the summary still come."""
    results, samples = fake_results(biases=(0.5,), seeds=(0, 1), user_data=True)
    figures.plot(results, str(tmp_path), None, METHODS)
    for name in ("curves.png", "comparison.png", "gold_vs_kl.png", "reward_models.png"):
        assert_figure(tmp_path / name)
    report.print_summary(results, samples)
    out = capsys.readouterr().out
    assert "held-out acc" in out and "win rate" not in out


def test_curves_have_a_row_for_every_bias(tmp_path):
    """curves.png of two biases is about twice as tall as that of one: a row per bias, not the first bias only."""
    results, _ = fake_results(biases=(0.0, 0.5), seeds=(0,))
    figures.plot(results, str(tmp_path), None, METHODS)
    two = matplotlib.image.imread(tmp_path / "curves.png").shape[0]
    one_bias = dict(results, curves={"0.0": results["curves"]["0.0"]})
    figures.plot(one_bias, str(tmp_path), None, METHODS)
    assert two > 1.7 * matplotlib.image.imread(tmp_path / "curves.png").shape[0]


def test_checkpoint_means_average_seeds_at_each_step_in_step_order():
    """two seeds with checkpoints (kl, win) at steps 20 then 10 -> means in step order: step 10 (1.5, 0.55), step 20
    (3.5, 0.65); a record without checkpoints gives its own final point."""
    records = [dict(checkpoints=[dict(step=20, kl=3.0, win_rate=0.6), dict(step=10, kl=1.0, win_rate=0.5)]),
               dict(checkpoints=[dict(step=10, kl=2.0, win_rate=0.6), dict(step=20, kl=4.0, win_rate=0.7)])]
    kl, win = figures.checkpoint_means(records, "win_rate")
    assert kl == pytest.approx([1.5, 3.5]) and win == pytest.approx([0.55, 0.65])
    assert figures.checkpoint_means([dict(kl=2.0, win_rate=0.4)], "win_rate") == ([2.0], [0.4])


def test_results_of_an_older_run_still_print_and_plot(tmp_path, capsys):
    """results.json as written before this change: no run, paired, reward_models, checkpoints, kl_per_token or
    tokens, and curves as {method: rows} of the first run. the table prints, the figures are written."""
    results, _ = fake_results(biases=(0.0, 0.5), seeds=(0,))
    new = {"checkpoints", "kl_per_token", "tokens", "member_min_share"}
    runs = [{k: v for k, v in r.items() if k not in new} for r in results["runs"]]
    old = dict(config=results["config"], device="cpu", runs=runs, data=[], summary=report.summarize(runs),
               seconds=1.0, curves=results["curves"]["0.0"])
    report.print_summary(old)
    out = capsys.readouterr().out
    assert "pi_ref" in out and "need 2+ seeds" in out
    figures.plot(old, str(tmp_path), old["curves"], METHODS)
    for name in ("curves.png", "comparison.png", "gold_vs_kl.png", "sweep.png"):
        assert_figure(tmp_path / name)
    assert not os.path.exists(tmp_path / "reward_models.png")


def test_show_prints_a_runs_summary_again_and_says_when_it_is_partial(tmp_path, capsys):
    """python -m harness.report show RUN: what print_summary printed when the run ended, from the folder alone; a
    run that is not finished gets a first line saying how many method runs and cells it rests on; bad input is one
    error line with exit status 2."""
    results, samples = fake_results(biases=(0.5,), seeds=(1, 2))
    results["run"] = dict(status="finished")
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    report.print_summary(results, samples)
    printed = capsys.readouterr().out
    assert report.main(["show", str(tmp_path)]) == 0
    assert capsys.readouterr().out == printed and "my review of film 0" in printed
    results["run"]["status"] = "interrupted"
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert report.main(["show", str(tmp_path / "results.json")]) == 0
    first, rest = capsys.readouterr().out.split("\n", 1)
    assert first.startswith(f"partial: the run is interrupted; {len(results['runs'])} method runs over 2 (bias, seed)")
    assert rest == printed
    (tmp_path / "samples.jsonl").write_text('{"bias": 0.5, "se')  # a write cut off by a kill
    for argv in (["show", str(tmp_path)], ["show", str(tmp_path / "gone")], ["show", str(tmp_path), str(tmp_path)]):
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_compare_runs_gives_b_minus_a_seed_by_seed_on_the_seeds_both_ran(tmp_path, capsys):
    """run a: e-dpo win rates 0.5, 0.6, 0.7 at seeds 0, 1, 2; run b: 0.6, 0.8 at seeds 0, 1 (and a method a lacks).
    b - a = (0.1, 0.2) over the shared seeds 0, 1: mean 0.15, interval 0.15 +- 12.706 * sd / sqrt(2)."""
    def rec(seed, method, w):
        return dict(bias=0.5, seed=seed, method=method, win_rate=w, gold_reward=0.0, length=10.0, kl=1.0,
                    logps_chosen_change=0.0)
    a = dict(runs=[rec(s, "e-dpo", w) for s, w in ((0, 0.5), (1, 0.6), (2, 0.7))])
    b = dict(runs=[rec(0, "e-dpo", 0.6), rec(1, "e-dpo", 0.8), rec(0, "x-dpo", 0.1)])
    rows = [p for p in report.compare_runs(a, b) if p["key"] == "win_rate"]
    assert [(p["method"], p["seeds"]) for p in rows] == [("e-dpo", [0, 1])]
    half = 12.706 * np.std([0.1, 0.2], ddof=1) / np.sqrt(2)
    assert rows[0]["mean"] == pytest.approx(0.15) and rows[0]["high"] == pytest.approx(0.15 + half, rel=1e-3)
    for name, res in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    assert report.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "+0.150" in capsys.readouterr().out
    for res in (a, b):  # runs on your own data have no bias
        for rec in res["runs"]:
            rec["bias"] = None
    report.print_comparison(report.compare_runs(a, b), ["a", "b"])
    assert "bias" not in capsys.readouterr().out
    assert report.main(["compare", str(tmp_path / "a"), str(tmp_path / "nothing")]) == 2
    done = subprocess.run([sys.executable, "-m", "harness.report", "compare", str(tmp_path / "a"),
                           str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.startswith("error:")  # python -m harness.report compare runs main
    assert "cannot read" in capsys.readouterr().err
