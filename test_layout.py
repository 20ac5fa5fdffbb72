"""tests of the project's layout (docs/layout.md): which file may import which, the method file standing alone,
the modules that run without torch, the README as a front page, and every link in the docs."""
import ast
import glob
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.py"))
                 if not os.path.basename(p).startswith(("test_", "conftest")))
DOCS = ["README.md"] + sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "docs", "*.md")))


def layout_table():
    """{module: (may import, torch-free?)} from the table in docs/layout.md#imports."""
    doc = open(os.path.join(HERE, "docs", "layout.md")).read()
    table = doc[doc.index('<a id="imports">'):].split("\n## ")[0]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\| `(\w+)\.py` \| (.*) \| ([\w, ]+) \|$", line)
        if m:
            allowed = set() if m.group(3).strip() == "nothing" else {x.strip() for x in m.group(3).split(",")}
            rows[m.group(1)] = (allowed, "*no torch*" in m.group(2))
    return rows


def is_main_block(node):
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)


def project_imports(module, skip_main=False):
    """the project modules that `module` imports anywhere in its code (a function's own imports too)."""
    tree = ast.parse(open(os.path.join(HERE, module + ".py")).read())
    body = [n for n in tree.body if not (skip_main and is_main_block(n))]
    names = set()
    for node in (n for top in body for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(MODULES)


def test_every_module_has_a_row_in_the_layout_and_every_row_a_module():
    rows = layout_table()
    assert sorted(rows) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_only_what_its_row_in_the_layout_allows(module):
    allowed, _ = layout_table()[module]
    extra = project_imports(module, skip_main=module == "rddpo") - allowed - {module}
    assert extra == set(), f"{module}.py imports {sorted(extra)}; docs/layout.md#imports allows {sorted(allowed)}"


def test_the_method_file_imports_no_other_module_of_the_project_and_hands_its_command_line_to_the_experiment():
    """rddpo.py names experiment only in its __main__ block (python rddpo.py runs the experiment), and importing it
    loads no other module of the project; without the __main__ block the rule is met by construction."""
    assert project_imports("rddpo", skip_main=True) == set()
    tree = ast.parse(open(os.path.join(HERE, "rddpo.py")).read())
    main = [n for n in tree.body if is_main_block(n)]
    assert len(main) == 1 and project_imports("rddpo") == {"experiment"}
    code = f"import sys; sys.path.insert(0, {HERE!r}); import rddpo; print(sorted(set(sys.modules) & {set(MODULES)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['rddpo']"


def test_the_modules_marked_no_torch_import_without_loading_torch():
    light = [m for m, (_, no_torch) in layout_table().items() if no_torch]
    assert {"cli", "report", "records", "figures", "toy_bandit"} <= set(light)
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import {', '.join(light)}; "
            f"print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_the_readme_is_a_front_page_within_15000_characters():
    assert len(open(os.path.join(HERE, "README.md")).read()) <= 15000


def links(path):
    """(target, fragment) of every relative markdown link and image in a page; web links are left out."""
    text = re.sub(r"```.*?```", "", open(os.path.join(HERE, path)).read(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            file, _, fragment = target.partition("#")
            yield file, fragment


@pytest.mark.parametrize("page", DOCS)
def test_every_link_in_the_docs_leads_to_a_file_and_every_fragment_to_an_anchor_there(page):
    """relative to the page; a #fragment must be an <a id="..."> in the page it points to."""
    seen = 0
    for file, fragment in links(page):
        target = os.path.normpath(os.path.join(HERE, os.path.dirname(page), file)) if file else os.path.join(HERE, page)
        assert os.path.exists(target), (page, file)
        if fragment:
            anchors = set(re.findall(r'<a id="([^"]+)">', open(target).read()))
            assert fragment in anchors, (page, file, fragment)
        seen += 1
    assert seen > 0 or page != "README.md"


def test_the_readme_links_every_docs_page():
    linked = {os.path.normpath(f) for f, _ in links("README.md")}
    assert [p for p in DOCS[1:] if p not in linked] == []
