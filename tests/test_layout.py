"""tests of the project's layout (docs/layout.md): the root the brief names, which file may import which, the method
file standing alone and in the paper's order, the modules that run without torch, every command the docs show, the
notebooks importing the project without touching sys.path, the README as a front page, and every link in the docs."""
import ast
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root
FILES = sorted([os.path.relpath(p, ROOT)[:-len(".py")] for pattern in ("*.py", "harness/*.py", "tools/*.py")
                for p in glob.glob(os.path.join(ROOT, pattern))
                if not os.path.basename(p).startswith(("test_", "__init__"))] + ["tests/mutation_check"])
MODULES = {os.path.basename(f): f for f in FILES}  # the name a module is imported by -> its file
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
BRIEF = ["rddpo.py", "toy_bandit.py", "test_rddpo.py", "notebooks", "README.md"]


def layout_table():
    """{file without .py: (module names it may import, torch-free?)} from the table in docs/layout.md#imports."""
    doc = open(os.path.join(ROOT, "docs", "layout.md")).read()
    table = doc[doc.index('<a id="imports">'):].split("\n## ")[0]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `([\w/]+)\.py` \| (.*) \| ([\w, ]+) \|$", line)
        if m:
            allowed = set() if m.group(3).strip() == "nothing" else {x.strip() for x in m.group(3).split(",")}
            rows[m.group(1)] = (allowed, "*no torch*" in m.group(2))
    return rows


def is_main_block(node):
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)


def project_imports(file, skip_main=False):
    """the project modules that `file` imports anywhere in its code (a function's own imports too), by module name:
    `from harness import cli, data` and `from harness.cli import x` both count as cli (and data)."""
    tree = ast.parse(open(os.path.join(ROOT, file + ".py")).read())
    body = [n for n in tree.body if not (skip_main and is_main_block(n))]
    names = set()
    for node in (n for top in body for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[-1] if a.name.startswith("harness.") else a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "harness":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[-1] if node.module.startswith("harness.") else node.module)
    return names & set(MODULES)


def test_the_root_is_the_brief_plus_what_every_project_carries():
    """a clean clone's root (what git tracks) holds the brief's five and at most 13 entries besides dot-files."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout (tests/mutation_check.py runs the suite in a copy without one)")
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True, check=True).stdout
    tops = sorted({f.split("/")[0] for f in tracked.split("\n") if f and not f.startswith(".")})
    assert set(BRIEF) <= set(tops), tops
    assert len(tops) <= 13, tops


def test_every_module_has_a_row_in_the_layout_and_every_row_a_module():
    assert sorted(layout_table()) == FILES


@pytest.mark.parametrize("file", FILES)
def test_each_module_imports_only_what_its_row_in_the_layout_allows(file):
    allowed, _ = layout_table()[file]
    own = os.path.basename(file)
    extra = project_imports(file, skip_main=own == "rddpo") - allowed - {own}
    assert extra == set(), f"{file}.py imports {sorted(extra)}; docs/layout.md#imports allows {sorted(allowed)}"


def test_the_method_file_imports_no_other_module_of_the_project_and_hands_its_command_line_to_the_experiment():
    """rddpo.py names the harness only in its __main__ block (python rddpo.py runs the experiment), and importing it
    loads no other module of the project; toy_bandit.py imports none at all."""
    assert project_imports("rddpo", skip_main=True) == set() and project_imports("toy_bandit") == set()
    tree = ast.parse(open(os.path.join(ROOT, "rddpo.py")).read())
    main = [n for n in tree.body if is_main_block(n)]
    assert len(main) == 1 and project_imports("rddpo") == {"experiment"}
    code = ("import sys, rddpo, toy_bandit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('harness', 'rddpo_trl', 'bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_method_file_reads_in_the_papers_order_with_its_knobs_first():
    """rddpo.py defines Knobs first, then the implicit reward, the losses and the forward-KL estimate, reward models,
    training, and only then the tokenisation helpers; the experiment's Config extends Knobs and repeats none of its
    fields but those whose default depends on the model there (lr, lora, reward_models, micro_batch)."""
    tree = ast.parse(open(os.path.join(ROOT, "rddpo.py")).read())
    line = {n.name: n.lineno for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    order = ["Knobs", "implicit_reward", "dpo_loss", "ipo_loss", "distill_loss", "pessimistic_distill_loss",
             "pessimistic_dpo_loss", "forward_kl_estimate", "bradley_terry_loss", "RewardModel", "reward_scores",
             "train_policy", "encode", "pad", "tokenize", "seed_everything", "progress"]
    assert all(name in line for name in order)
    losses = max(line[n] for n in order[2:8])
    assert line["Knobs"] < line["implicit_reward"] < min(line[n] for n in order[2:8]) and losses < line["RewardModel"]
    assert line["reward_scores"] < line["train_policy"] < min(line[n] for n in order[12:])
    import rddpo
    from harness import experiment
    knobs = rddpo.Knobs()
    assert (knobs.beta, knobs.gamma, knobs.ensemble, knobs.rm_steps) == (0.1, 0.1, 4, 150)
    assert issubclass(experiment.Config, rddpo.Knobs)
    assert set(experiment.Config.__annotations__) & set(rddpo.Knobs.__annotations__) == {
        "lr", "lora", "reward_models", "micro_batch"}


def test_the_modules_marked_no_torch_import_without_loading_torch():
    light = [f for f, (_, no_torch) in layout_table().items() if no_torch]
    assert {"harness/cli", "harness/report", "harness/records", "harness/figures", "toy_bandit"} <= set(light)
    names = ", ".join(f.replace("/", ".") for f in light)
    code = f"import sys; import {names}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def doc_commands():
    """every `python FILE` and `python -m MODULE` of the project that README.md and docs/*.md show."""
    found = set()
    for page in DOCS:
        text = open(os.path.join(ROOT, page)).read()
        found |= set(re.findall(r"\bpython ((?:-m (?:harness\.\w+|rddpo\w*|toy_bandit))|[\w./-]+\.py)\b", text))
    return sorted(found)


def test_the_docs_show_the_commands_a_reader_needs():
    assert {"rddpo.py", "toy_bandit.py", "tools/bench.py", "tools/rddpo_trl.py", "tools/convert_gguf.py",
            "-m harness.report", "-m harness.grid", "notebooks/regenerate.py"} <= set(doc_commands())


@pytest.mark.slow
def test_every_command_in_the_docs_names_a_file_that_exists_and_answers_help():
    """each one, run from the root as the docs show it, prints its usage and exits 0 (all at once: about 30 s)."""
    commands = doc_commands()
    for c in commands:
        assert c.startswith("-m ") or os.path.isfile(os.path.join(ROOT, c)), f"python {c}: no such file"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    procs = {c: subprocess.Popen([sys.executable, *c.split(), "--help"], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands}
    for c, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in out, f"python {c} --help: {err[-500:]}"


def test_no_notebook_edits_the_import_path():
    """a notebook copied out of notebooks/ still runs: the project is installed (pip install -e .), not found by
    inserting a folder into sys.path."""
    for path in glob.glob(os.path.join(ROOT, "notebooks", "*.py")) + glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")):
        assert "sys.path" not in open(path).read(), path


def test_the_readme_is_a_front_page_within_15000_characters():
    assert len(open(os.path.join(ROOT, "README.md")).read()) <= 15000


def links(path):
    """(target, fragment) of every relative markdown link and image in a page; web links are left out."""
    text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, path)).read(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            file, _, fragment = target.partition("#")
            yield file, fragment


@pytest.mark.parametrize("page", DOCS)
def test_every_link_in_the_docs_leads_to_a_file_and_every_fragment_to_an_anchor_there(page):
    """relative to the page; a #fragment must be an <a id="..."> in the page it points to."""
    seen = 0
    for file, fragment in links(page):
        target = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), file)) if file else os.path.join(ROOT, page)
        assert os.path.exists(target), (page, file)
        if fragment:
            anchors = set(re.findall(r'<a id="([^"]+)">', open(target).read()))
            assert fragment in anchors, (page, file, fragment)
        seen += 1
    assert seen > 0 or page != "README.md"


def test_the_readme_links_every_docs_page():
    linked = {os.path.normpath(f) for f, _ in links("README.md")}
    assert [p for p in DOCS[1:] if p not in linked] == []


def test_every_mutant_of_the_mutation_check_still_matches_the_code_exactly_once():
    """tests/mutation_check.py plants one-line bugs by replacing a snippet; a snippet the code no longer holds (or
    holds twice) would silently test nothing, so each must occur exactly once in its file."""
    import mutation_check
    assert mutation_check.stale(mutation_check.MUTANTS) == []
