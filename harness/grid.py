"""
grid.py: the comparison across its knobs, one knob at a time (`python rddpo.py --grid ...`).

    python rddpo.py --grid beta=0.05,0.1,0.3 gamma=0,0.1,1 --bias 0.5 --methods dpo,d-dpo,e-dpo,p-dpo --seeds 0 1 2 3 4

Each knob's values are run with every other flag as given on the command line; a setting that two knobs share
(the defaults, usually) runs once. Each setting is an ordinary run: a run-NNN folder in --out with its own
results.json, samples and figures. The grid's own folder, grid-NNN, holds results.json (per knob value: the run
folder, the paired differences e-dpo - dpo, p-dpo - dpo and e-dpo - d-dpo within each seed with their 95 %
t-intervals, and the diagnostics that explain them) and grid.png (each difference against each knob, with its
interval and the zero line). Every setting is checked before any work.
"""
import dataclasses
import os
import time

import numpy as np

from harness import cli, figures, records, report


def read_size(text):
    """'4x128' -> (n_layer, n_embd): the tiny model's layers and width."""
    layers, _, width = text.partition("x")
    if not (layers.isdigit() and width.isdigit() and int(layers) >= 1 and int(width) >= 1):
        raise ValueError(f"{text!r} is not LAYERSxWIDTH (e.g. 4x128)")
    return int(layers), int(width)


def read_number(kind):
    def read(text):
        try:
            return (kind(text),)
        except ValueError:
            raise ValueError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return read


# the knobs on the command line -> (the Config fields a value sets, how a value is read)
KNOBS = {"beta": (("beta",), read_number(float)), "gamma": (("gamma",), read_number(float)),
         "K": (("ensemble",), read_number(int)), "pairs": (("n_pairs",), read_number(int)),
         "size": (("n_layer", "n_embd"), read_size), "lr": (("lr",), read_number(float)),
         "steps": (("steps",), read_number(int))}
ALIASES = {"ensemble": "K", "n_pairs": "pairs", "n-pairs": "pairs"}
DIFFERENCES = (("e-dpo", "dpo"), ("p-dpo", "dpo"), ("e-dpo", "d-dpo"))  # (method, base), paired within each seed


def parse_grid(items):
    """['beta=0.05,0.1', 'K=2,8'] -> [(knob, [(text, {field: value})])], each problem one UsageError line."""
    knobs = []
    for item in items:
        name, eq, values = item.partition("=")
        name = ALIASES.get(name, name)
        if not eq or not values:
            raise cli.UsageError(f"--grid takes knob=value,value,... (got {item!r}), e.g. --grid beta=0.05,0.1,0.3")
        if name not in KNOBS:
            raise cli.UsageError(f"unknown knob {name!r} in --grid; choose from {', '.join(KNOBS)}")
        if name in [k for k, _ in knobs]:
            raise cli.UsageError(f"--grid names the knob {name} twice; give its values once, e.g. {name}=a,b,c")
        fields, read = KNOBS[name]
        texts = values.split(",")
        try:
            parsed = [dict(zip(fields, read(t.strip()))) for t in texts]
        except ValueError as e:
            raise cli.UsageError(f"--grid {name}: {e}") from None
        if len({tuple(p.values()) for p in parsed}) != len(parsed):
            raise cli.UsageError(f"--grid {name} names a value twice; give each once")
        knobs.append((name, list(zip([t.strip() for t in texts], parsed))))
    return knobs


def grid_settings(cfg, given, methods):
    """every (knob, value) as (knob, text, key, Config, the flags it counts as given), checked as a run of its own
    would check it (a knob that does not apply is an error), and the distinct settings {key: (Config, given)}."""
    if cfg.sweep:
        raise cli.UsageError("--grid and --sweep both vary a setting; run one of them (a bias grid is --sweep)")
    if not any(m in cfg.method_list() and b in cfg.method_list() for m, b in DIFFERENCES):
        raise cli.UsageError("--grid compares e-dpo and p-dpo with dpo, and e-dpo with d-dpo; --methods needs one such pair")
    rows, distinct = [], {}
    for knob, values in parse_grid(cfg.grid):
        for text, fields in values:
            both = set(fields) & set(given or ())
            if both:
                raise cli.UsageError(f"--grid {knob} and --{sorted(both)[0].replace('_', '-')} both set it; leave one out")
            setting = dataclasses.replace(cfg, grid=[], **fields)
            flags = set(given or ()) | set(fields)
            try:
                cli.check_config(setting, methods, flags)
                if setting.n_embd % setting.n_head:
                    raise cli.UsageError(f"the width {setting.n_embd} is not a multiple of --n-head {setting.n_head}")
            except cli.UsageError as e:
                raise cli.UsageError(f"--grid {knob}={text}: {e}") from None
            key = repr(sorted(dataclasses.asdict(setting).items()))  # the same settings, the same run
            distinct.setdefault(key, (setting, flags))
            rows.append((knob, text, key))
    return rows, distinct


def differences(runs):
    """the deciding differences of one setting's records: [paired row] for each (method, base) of DIFFERENCES on the
    win rate (your own data: held-out accuracy) and on KL, each row as report.paired gives it."""
    primary = "win_rate" if any("win_rate" in r for r in runs) else "heldout_accuracy"
    out = []
    for key in (primary, "kl"):
        for method, base in DIFFERENCES:
            out += [p for p in report.paired(runs, key, base) if p["method"] == method]
    return out


def diagnostics(results):
    """what explains a setting's differences: e-dpo's member minimum shares (mean over seeds), the plain reward
    model's and the family's accuracy against gold, and the log-ratio the plain model asks for (|dr| / beta)."""
    shares = [r["member_min_share"] for r in results["runs"] if r.get("member_min_share")]
    rms = results.get("reward_models", [])
    mean = lambda key, which: (float(np.mean(v)) if (v := [m[key] for m in rms if which(m["model"]) and  # noqa: E731
                                                            m.get(key) is not None]) else None)
    return dict(member_min_share=np.mean(shares, axis=0).tolist() if shares else None,
                accuracy_gold_plain=mean("accuracy_gold", lambda m: m == "plain"),
                accuracy_gold_family=mean("accuracy_gold", lambda m: m != "plain"),
                asks_logratio=mean("target_logratio", lambda m: m == "plain"))


def run_grid(cfg, given, argv, run, methods):
    """run(cfg, given, argv) -> (results, run folder) for each distinct setting, then the grid's table, results.json
    and figure. -> (the grid's results, its folder)"""
    started = time.time()
    rows, distinct = grid_settings(cfg, given, methods)
    records.check_writable(cfg.out)
    folder = records.new_run_dir(cfg.out, prefix="grid")
    grid = dict(run=dict(status="running", **records.run_info(argv, started)), config=dataclasses.asdict(cfg), rows=[])
    done, path = {}, os.path.join(folder, "results.json")
    records.write_json(path, grid)
    plural = lambda n, what: f"{n} {what}{'s' * (n != 1)}"  # noqa: E731
    print(f"grid: {plural(len(distinct), 'setting')} for {plural(len(rows), 'knob value')}, "
          f"{plural(len(cfg.seeds), 'seed')} each; writing to {folder}")
    try:
        for i, (key, (setting, flags)) in enumerate(distinct.items(), 1):
            named = ", ".join(f"{k}={t}" for k, t, kk in rows if kk == key)
            print(f"grid: setting {i}/{len(distinct)} ({named})", flush=True)
            done[key] = run(setting, flags, argv)
            grid["rows"] = grid_rows(rows, done)
            records.write_json(path, grid)
    except BaseException as e:  # a setting's run stopped by ctrl-c or SIGTERM comes back as cli.Interrupted
        if isinstance(e, (KeyboardInterrupt, cli.Interrupted)):
            by = getattr(e, "by", "SIGTERM" if isinstance(e, cli.Terminated) else "ctrl-c")
            grid["run"].update(status="interrupted", interrupted_by=by, error=records.one_line(e))
        else:
            grid["run"].update(status="failed", error=records.one_line(e))
        records.write_json(path, grid)
        raise
    grid["run"].update(status="finished", wall_seconds=time.time() - started)
    records.write_json(path, grid)
    print_grid(grid["rows"], len(cfg.seeds))
    plot_grid(grid["rows"], os.path.join(folder, "grid.png"), title(grid["config"]))
    print(f"grid done in {time.time() - started:.0f} s; its table in {path}, its figure in {folder}/grid.png")
    return grid, folder


def grid_rows(rows, done):
    """one entry per (knob, value) whose setting has run: its run folder, differences and diagnostics."""
    out = []
    for knob, text, key in rows:
        if key in done:
            results, run_dir = done[key]
            out.append(dict(knob=knob, value=text, run=os.path.basename(run_dir), seeds=sorted({r["seed"] for r in
                       results["runs"]}), differences=differences(results["runs"]), **diagnostics(results)))
    return out


def print_grid(rows, n_seeds):
    """the grid's table: per knob value, each deciding difference (mean [95 % t-interval]), then the diagnostics."""
    keys = list(dict.fromkeys(p["key"] for row in rows for p in row["differences"]))
    names = [f"{m} - {b}" for m, b in DIFFERENCES]
    print(f"\ngrid: paired differences within each seed, mean [95 % t-interval] over {n_seeds} seeds; "
          "* the interval excludes 0")
    for key in keys:
        name, digits = report.PAIRED_NAMES[key]
        print(f"{name:<20}" + "".join(f"{n:>30}" for n in names))
        for row in rows:
            cells = {f"{p['method']} - {p['base']}": p for p in row["differences"] if p["key"] == key}
            print(f"{row['knob'] + ' ' + row['value']:<20}" +
                  "".join(f"{report.interval_text(cells.get(n), digits):>30}" for n in names))
    print(f"{'diagnostics':<20}{'RM acc (gold)':>16}{'family acc':>12}{'asks |h|':>10}  e-dpo member min shares")
    for row in rows:
        num = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        shares = " ".join(f"{s:.2f}" for s in row["member_min_share"]) if row["member_min_share"] else "-"
        print(f"{row['knob'] + ' ' + row['value']:<20}{num(row['accuracy_gold_plain'], '.3f'):>16}"
              f"{num(row['accuracy_gold_family'], '.3f'):>12}{num(row['asks_logratio'], '.1f'):>10}  {shares}")


def title(config):
    """the settings around the knobs, for the figure: the run's (figures.settings) and, on the task, the bias."""
    return figures.settings(config) + ("" if config.get("data") else f", bias {config['bias']}")


def plot_grid(rows, path, heading=""):
    """grid.png: one column per knob; each deciding difference against the knob's values, with its 95 % t-interval
    and the zero line; the primary metric above, KL below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    knobs = list(dict.fromkeys(r["knob"] for r in rows))
    keys = list(dict.fromkeys(p["key"] for r in rows for p in r["differences"]))
    fig, axes = plt.subplots(len(keys), len(knobs), figsize=(4.2 * len(knobs), 3.4 * len(keys)), squeeze=False)
    for col, knob in enumerate(knobs):
        mine = [r for r in rows if r["knob"] == knob]
        for row_i, key in enumerate(keys):
            ax = axes[row_i][col]
            for j, (method, base) in enumerate(DIFFERENCES):
                cells = [(x, p) for x, r in enumerate(mine) for p in r["differences"]
                         if (p["key"], p["method"], p["base"]) == (key, method, base) and p["low"] is not None]
                if cells:
                    shift = 0.1 * (j - 1)
                    ax.errorbar([x + shift for x, _ in cells], [p["mean"] for _, p in cells], capsize=3, marker="o",
                                yerr=[[p["mean"] - p["low"] for _, p in cells], [p["high"] - p["mean"] for _, p in cells]],
                                ls="none", color=f"C{j}", label=f"{method} - {base}")
            ax.axhline(0, color="black", lw=1)
            ax.set_xticks(range(len(mine)), [r["value"] for r in mine])
            ax.set(xlabel=knob, ylabel=f"{report.PAIRED_NAMES[key][0]} difference (same seed)")
        axes[0][col].set_title(f"{knob}: paired difference, 95 % t-interval", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"one knob at a time, the others at the run's flags; {heading}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def combine(grids):
    """the rows of several grids' results.json in order, each knob value once (the first grid that ran it), and
    the seeds they ran. an error: a run's results rather than a grid's, a grid that did not finish (its table would
    be partial), or grids whose other flags or seeds differ (one table, one setting around each knob)."""
    rows, seen = [], set()
    for path, grid in grids:
        if "rows" not in grid:
            raise cli.UsageError(f"{path}: the results of a run, not of a grid; give grid-NNN folders")
        others = {k: v for k, v in grid["config"].items() if k not in ("grid", "out")}
        if others != {k: v for k, v in grids[0][1]["config"].items() if k not in ("grid", "out")}:
            raise cli.UsageError(f"{path} and {grids[0][0]} were run with other flags or seeds besides --grid; "
                             "give grids of one setting")
        if grid.get("run", {}).get("status") != "finished":
            raise cli.UsageError(f"{path}: the grid did not finish (status {grid.get('run', {}).get('status')!r}); "
                             "rerun its command")
        for row in grid["rows"]:
            if (row["knob"], row["value"]) not in seen:
                seen.add((row["knob"], row["value"]))
                rows.append(row)
    return rows, grids[0][1]["config"]["seeds"]


def main(argv=None):
    """python -m harness.grid GRID [GRID ...] [--figure PATH]: one table (and figure) from the grid folders given."""
    p = cli.ArgumentParser(description="print one table from grid folders that rddpo.py --grid wrote (several: "
                                       "their rows in turn, a knob value once), and draw it with --figure")
    p.add_argument("grids", nargs="+", help="grid-NNN folders (or their results.json)")
    p.add_argument("--figure", default="", help="also draw the table's differences into this .png")
    args = p.parse_args(argv)

    def show():
        grids = [(path, report.read_results(path)) for path in args.grids]
        rows, seeds = combine(grids)
        print_grid(rows, len(seeds))
        if args.figure:
            plot_grid(rows, args.figure, title(grids[0][1]["config"]))
            print(f"figure in {args.figure}")
    return cli.cli(show)


if __name__ == "__main__":
    raise SystemExit(main())
