"""tests for grid.py (python rddpo.py --grid ...): bad grids fail before any work, each knob value runs the setting
it names, settings that two knobs share run once, and every difference pairs a method with its base at the same
seed. no model is trained here (the end-to-end grid run is in tests/test_experiment.py). run with `pytest -q tests/test_grid.py`."""
import json
import os
import time

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on the network
import rddpo  # noqa: E402
from harness import cli, experiment, grid  # noqa: E402


@pytest.mark.parametrize("args, says", [
    (["--grid", "beta"], "--grid takes knob=value,value,..."),
    (["--grid", "temperature=1,2"], "unknown knob 'temperature' in --grid; choose from beta, gamma, K"),
    (["--grid", "beta=0.1,x"], "--grid beta: 'x' is not a number"),
    (["--grid", "K=2,2.5"], "--grid K: '2.5' is not a whole number"),
    (["--grid", "size=4by128"], "--grid size: '4by128' is not LAYERSxWIDTH"),
    (["--grid", "K=2,2"], "--grid K names a value twice"),
    (["--grid", "beta=0.1", "beta=0.3"], "--grid names the knob beta twice"),
    (["--grid", "beta=-1"], "--grid beta=-1: --beta must be > 0"),
    (["--grid", "beta=0.3", "--beta", "0.2"], "--grid beta and --beta both set it"),
    (["--grid", "K=2,8", "--methods", "dpo,p-dpo"], "--grid K=2: --ensemble applies to e-dpo only"),
    (["--grid", "size=4x128", "--model", "gpt2"], "--grid size=4x128: --n-layer --n-embd applies to the built-in tiny"),
    (["--grid", "pairs=128", "--data", "docs/examples/task_pairs.jsonl"], "--grid pairs=128: --n-pairs applies to the built-in"),
    (["--grid", "size=4x30"], "--grid size=4x30: the width 30 is not a multiple of --n-head 4"),
    (["--grid", "beta=0.3", "--sweep"], "--grid and --sweep both vary a setting"),
    (["--grid", "beta=0.3", "--methods", "dpo,ipo"], "--methods needs one such pair"),
])
def test_bad_grid_is_one_error_line_before_any_work(tmp_path, capsys, args, says):
    """each bad grid: exit 2 within seconds, one `error:` line that names the problem, no folder written."""
    t0 = time.time()
    assert experiment.main([*args, "--out", str(tmp_path / "out")]) == 2
    assert time.time() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_each_knob_value_changes_only_its_own_fields_and_shared_settings_run_once():
    """beta 0.05 and 0.1, gamma 0.1 and 1, size 4x128: beta=0.1 and gamma=0.1 are both the defaults, so 5 values
    name 4 settings; each differs from the command's flags in its knob's fields alone."""
    cfg = experiment.Config(grid=["beta=0.05,0.1", "gamma=0.1,1", "size=4x128"], methods="dpo,e-dpo", seeds=[3, 1])
    rows, distinct = grid.grid_settings(cfg, {"grid", "methods", "seeds"}, rddpo.METHODS)
    assert [(k, t) for k, t, _ in rows] == [("beta", "0.05"), ("beta", "0.1"), ("gamma", "0.1"), ("gamma", "1"),
                                           ("size", "4x128")]
    assert len(distinct) == 4 and rows[1][2] == rows[2][2]
    base = experiment.Config(methods="dpo,e-dpo", seeds=[3, 1])
    changed = [{f: v for f, v in vars(c).items() if v != getattr(base, f)} for c, _ in distinct.values()]
    assert changed == [{"beta": 0.05}, {}, {"gamma": 1.0}, {"n_layer": 4, "n_embd": 128}]
    assert [sorted(flags - {"grid", "methods", "seeds"}) for _, flags in distinct.values()] == \
        [["beta"], ["beta"], ["gamma"], ["n_embd", "n_layer"]]  # so a knob that does not apply is refused


BASE = {"dpo": 0.30, "d-dpo": 0.35, "e-dpo": 0.40, "p-dpo": 0.45}


def fake_run(calls):
    """a stand-in for experiment.run: records whose numbers tell the setting, the seed and the method apart. win rate:
    the method's base number + beta + seed / 100, and e-dpo gains another seed / 10; KL: 10 * beta + the seed for
    every method but p-dpo, which adds the seed again. the seeds come out of order, as nothing promises them."""
    def run(cfg, given, argv):
        calls.append((cfg, given))
        runs = []
        for seed in reversed(cfg.seeds):
            for method in cfg.method_list():
                win = BASE[method] + cfg.beta + seed / 100 + (seed / 10 if method == "e-dpo" else 0)
                kl = 10 * cfg.beta + seed * (2 if method == "p-dpo" else 1)
                runs.append(dict(bias=cfg.bias, seed=seed, method=method, win_rate=win, kl=kl,
                                 **({"member_min_share": [1.0] + [0.0] * (cfg.ensemble - 1)} if method == "e-dpo" else {})))
        reward_models = [dict(bias=cfg.bias, seed=s, model=m, accuracy_gold=acc, target_logratio=4.0 / cfg.beta)
                         for s in cfg.seeds for m, acc in [("plain", 0.6), ("member 1", 0.5), ("member 2", 0.7)]]
        return dict(runs=runs, reward_models=reward_models), f"{cfg.out}/run-beta{cfg.beta}"
    return run


def test_grid_pairs_each_method_with_its_base_at_the_same_seed_in_the_setting_it_ran(tmp_path, capsys):
    """seeds 0, 2, 5 at beta 0.05 and 0.2: e-dpo - dpo is 0.1 + seed / 10 per seed (0.10, 0.30, 0.60), p-dpo - dpo
    is 0.15 whatever the seed, e-dpo - d-dpo 0.05 + seed / 10; KL: p-dpo - dpo is the seed (0, 2, 5), e-dpo - dpo 0.
    a pairing across seeds, or numbers from the other setting, would give other differences."""
    calls = []
    cfg = experiment.Config(grid=["beta=0.05,0.2"], methods="dpo,d-dpo,e-dpo,p-dpo", seeds=[0, 2, 5], out=str(tmp_path))
    out, folder = grid.run_grid(cfg, {"grid", "methods", "seeds", "out"}, ["--grid", "beta=0.05,0.2"], fake_run(calls),
                                rddpo.METHODS)
    assert [c.beta for c, _ in calls] == [0.05, 0.2] and all(c.grid == [] for c, _ in calls)
    assert [r["run"] for r in out["rows"]] == ["run-beta0.05", "run-beta0.2"]
    for row in out["rows"]:
        d = {(p["key"], p["method"], p["base"]): p for p in row["differences"]}
        assert d["win_rate", "e-dpo", "dpo"]["seeds"] == [0, 2, 5]
        assert d["win_rate", "e-dpo", "dpo"]["diffs"] == pytest.approx([0.1, 0.3, 0.6])
        assert d["win_rate", "p-dpo", "dpo"]["diffs"] == pytest.approx([0.15] * 3)
        assert d["win_rate", "e-dpo", "d-dpo"]["mean"] == pytest.approx(0.05 + 0.7 / 3)
        assert d["kl", "p-dpo", "dpo"]["diffs"] == pytest.approx([0, 2, 5])
        assert d["kl", "e-dpo", "dpo"]["diffs"] == pytest.approx([0, 0, 0])
        assert row["accuracy_gold_plain"] == pytest.approx(0.6) and row["accuracy_gold_family"] == pytest.approx(0.6)
        assert row["member_min_share"] == [1.0, 0.0, 0.0, 0.0]
    assert [r["asks_logratio"] for r in out["rows"]] == pytest.approx([80.0, 20.0])
    with open(os.path.join(folder, "results.json")) as fh:
        saved = json.load(fh)
    assert saved["run"]["status"] == "finished" and saved["rows"] == json.loads(json.dumps(out["rows"]))
    assert os.path.getsize(os.path.join(folder, "grid.png")) > 1000
    text = capsys.readouterr().out
    assert "beta 0.05" in text and "+0.333 [" in text  # e-dpo - dpo's mean win-rate difference, (0.1+0.3+0.6)/3


def test_a_failed_setting_leaves_the_grid_record_saying_so(tmp_path):
    """the second setting raises: the grid's results.json keeps the first row and says failed, with the error."""
    calls, inner = [], None

    def run(cfg, given, argv):
        if cfg.beta == 0.2:
            raise RuntimeError("the loss became nan")
        return inner(cfg, given, argv)
    inner = fake_run(calls)
    cfg = experiment.Config(grid=["beta=0.05,0.2"], methods="dpo,e-dpo", seeds=[0, 1], out=str(tmp_path))
    with pytest.raises(RuntimeError):
        grid.run_grid(cfg, {"grid"}, [], run, rddpo.METHODS)
    with open(os.path.join(tmp_path, "grid-001", "results.json")) as fh:
        saved = json.load(fh)
    assert saved["run"]["status"] == "failed" and "nan" in saved["run"]["error"]
    assert [r["value"] for r in saved["rows"]] == ["0.05"]


@pytest.mark.parametrize("stop,by", [(lambda: cli.Interrupted("interrupted by SIGTERM: ...", "SIGTERM"), "SIGTERM"),
                                     (lambda: cli.Terminated("SIGTERM"), "SIGTERM"), (KeyboardInterrupt, "ctrl-c")])
def test_a_setting_stopped_by_ctrl_c_or_sigterm_leaves_the_grid_record_interrupted_not_failed(tmp_path, stop, by):
    """a setting's run stopped by SIGTERM (which experiment.run reports as cli.Interrupted) or ctrl-c: the grid's
    results.json says interrupted and by what, keeps the first row, and the stop goes on up as it came."""
    inner = fake_run([])

    def run(cfg, given, argv):
        if cfg.beta == 0.2:
            raise stop()
        return inner(cfg, given, argv)
    cfg = experiment.Config(grid=["beta=0.05,0.2"], methods="dpo,e-dpo", seeds=[0, 1], out=str(tmp_path))
    with pytest.raises((cli.Interrupted, KeyboardInterrupt)):
        grid.run_grid(cfg, {"grid"}, [], run, rddpo.METHODS)
    with open(os.path.join(tmp_path, "grid-001", "results.json")) as fh:
        saved = json.load(fh)
    assert saved["run"]["status"] == "interrupted" and saved["run"]["interrupted_by"] == by
    assert [r["value"] for r in saved["rows"]] == ["0.05"]


def test_grid_py_prints_one_table_from_two_grids_each_knob_value_once(tmp_path, capsys):
    """two grids that share beta 0.1 (run as two commands): python -m harness.grid A B prints beta 0.05, beta 0.1 (once) and
    K 2, draws the figure; an unfinished grid, a missing folder, a grid of other seeds or a run's folder is one error
    line, exit 2."""
    grids = []
    for name, knobs in (("a", ["beta=0.05,0.1"]), ("b", ["beta=0.1", "K=2"])):
        cfg = experiment.Config(grid=knobs, methods="dpo,e-dpo", seeds=[0, 1], out=str(tmp_path / name))
        out, folder = grid.run_grid(cfg, {"grid"}, [], fake_run([]), rddpo.METHODS)
        grids.append(folder)
    capsys.readouterr()
    assert grid.main([*grids, "--figure", str(tmp_path / "both.png")]) == 0
    text = capsys.readouterr().out
    labels = [line.split("  ")[0] for line in text.splitlines() if line.startswith(("beta ", "K "))]
    assert labels[:3] == ["beta 0.05", "beta 0.1", "K 2"] and "over 2 seeds" in text
    assert os.path.getsize(tmp_path / "both.png") > 1000
    with open(os.path.join(grids[1], "results.json")) as fh:
        unfinished = dict(json.load(fh), run=dict(status="running"))
    with open(tmp_path / "unfinished.json", "w") as fh:
        json.dump(unfinished, fh)
    cfg = experiment.Config(grid=["K=8"], methods="dpo,e-dpo", seeds=[0, 1, 2], out=str(tmp_path / "c"))
    other_seeds = grid.run_grid(cfg, {"grid"}, [], fake_run([]), rddpo.METHODS)[1]
    (tmp_path / "run-001").mkdir()
    (tmp_path / "run-001" / "results.json").write_text(json.dumps(dict(run=dict(status="finished"), runs=[])))
    for bad, says in ((str(tmp_path / "unfinished.json"), "the grid did not finish"), (str(tmp_path / "no"), "cannot read"),
                      (other_seeds, "with other flags or seeds besides --grid"), (str(tmp_path / "run-001"), "not of a grid")):
        assert grid.main([grids[0], bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
