"""tests of the docs against the code: every `choice:` the code marks is explained in docs/METHOD.md, and every
mention of that page, in code, tests, notebooks and docs, names it as docs/METHOD.md with anchors that exist."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's root


def choice_owners(path):
    """the function, class, field or constant that each `choice:` mark in a file belongs to."""
    lines = open(path).read().splitlines()
    owner = re.compile(r"^\s*(?:def|class)\s+(\w+)|^(\w+)\s*=|^\s{4}(\w+): \w+ = ")
    for i, line in enumerate(lines):
        if "choice:" not in line or "`choice:" in line or "choice:`" in line:
            continue  # a mention of the mark, not a mark
        after = next((x for x in lines[i + 1:] if x.strip() and not x.strip().startswith("#")), "")
        if line.strip().startswith("#") and owner.match(after):  # a comment line just above a definition marks it
            yield owner.match(after).group(1, 2, 3)
        else:  # otherwise the mark belongs to the definition it is in
            yield next(m for m in map(owner.match, lines[i::-1]) if m).group(1, 2, 3)


def project_files(*patterns):
    """the files that the glob patterns match under the root, as paths relative to it."""
    return sorted(os.path.relpath(p, ROOT) for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern)))


def test_every_choice_in_the_code_is_in_method_md_and_every_link_to_it_resolves():
    """each function, field or constant that the code marks `choice:` is named in docs/METHOD.md's choices
    section; each mention of the page in code, tests, notebooks and readme says docs/METHOD.md, its #anchors exist."""
    doc = open(os.path.join(ROOT, "docs/METHOD.md")).read()
    choices = doc[doc.index('<a id="choices">'):doc.index('<a id="task">')]
    modules = [p for p in project_files("*.py", "harness/*.py", "tools/*.py")
               if not os.path.basename(p).startswith("test_")]  # rddpo.py, toy_bandit.py, the harness, the tools
    owners = {(name, next(n for n in groups if n)) for name in modules
              for groups in choice_owners(os.path.join(ROOT, name))}
    assert len(owners) >= 30
    assert [o for o in owners if f"`{o[1]}" not in choices] == []
    anchors = set(re.findall(r'<a id="([^"]+)">', doc))
    files = ["README.md", *modules] + project_files("docs/*.md", "test_*.py", "tests/*.py", "notebooks/*.py")
    for path in files:
        for match in re.finditer(r"([\w./]*)METHOD\.md(#[\w-]+)?", open(os.path.join(ROOT, path)).read()):
            assert match.group(1).endswith("docs/"), (path, match.group(0))
            assert match.group(2) is None or match.group(2)[1:] in anchors, (path, match.group(0))


def test_bench_pretrained_cell_is_one_cell_of_the_protocol_committed_in_method_md():
    """bench.py --pretrained's "cell" run has the flags of docs/METHOD.md#pretrained-protocol's command (its budget,
    methods and reward models' rate), at one of its biases and seeds: the time target is measured on the study's run."""
    import bench
    doc = open(os.path.join(ROOT, "docs/METHOD.md")).read()
    protocol = doc[doc.index('<a id="pretrained-protocol">'):]
    command = " ".join(re.search(r"\*\*Command\.\*\* `(python rddpo\.py[^`]+)`", protocol, re.S).group(1).split())
    flags = bench.PRETRAINED["cell"]["flags"].split()
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert set(pairs) == {"--bias", "--seeds", "--methods", "--n-pairs", "--n-eval", "--steps", "--batch-size",
                          "--eval-points", "--rm-lr"}
    for flag, value in pairs.items():
        if flag == "--bias":
            assert value in re.search(r"--sweep-biases (\S+)", command).group(1).split(",")
        elif flag == "--seeds":
            assert value in re.search(r"--seeds ([\d ]+)", command).group(1).split()
        else:
            assert f"{flag} {value}" in command, flag
