"""The layout the README promises: imports run one way along its chain, and no file outgrows a reading."""
import ast
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local_imports(path, modules):
    tree = ast.parse(open(path).read())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names & modules


def test_imports_run_one_way_down_the_readmes_file_table():
    readme = open(os.path.join(REPO, "README.md")).read()
    table = readme[readme.index("## Files, in reading order"):readme.index("## Choices made")]
    chain = re.findall(r"^\| `(\w+)\.py` \|", table, flags=re.M)
    modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "*.py"))}
    assert sorted(chain) == sorted(modules)  # every module has its place, once
    for position, name in enumerate(chain):
        later = local_imports(os.path.join(REPO, f"{name}.py"), modules) - set(chain[:position])
        assert not later, f"{name} imports {later}, which come after it"


def test_no_module_is_longer_than_500_lines():
    for path in glob.glob(os.path.join(REPO, "*.py")):
        assert len(open(path).read().splitlines()) <= 500, path


def test_every_published_result_is_one_this_code_reads_and_every_result_folder_is_cited():
    from eval import read_result
    results = os.path.join(REPO, "results")
    for path in glob.glob(os.path.join(results, "**", "*.json"), recursive=True):
        if not os.path.basename(path).startswith("bench"):
            read_result(path)  # refused in one line if made by other code
    cited = "".join(open(os.path.join(REPO, name)).read() for name in ("README.md", "REPORT.md", "STRESS.md"))
    for name in sorted(os.listdir(results)):  # each folder, and each file beside them
        assert f"results/{name}" in cited, f"results/{name} is cited by no report"
