"""Mutation testing of the analytic core and of validate's comparisons: mutmut 3, one module at a time.

    python benchmarks/mutation.py                        # every module below, then the score table
    python benchmarks/mutation.py validate kinds/conv    # some of them (names as in --list; kinds/FILE: one file)
    python benchmarks/mutation.py --list                 # the modules and the tests each one runs
    python benchmarks/mutation.py --table [--markdown]   # the table of the last runs, nothing run
    python benchmarks/mutation.py --survivors validate   # the diff of every mutant that survived

Not part of .ci/run: a run of everything takes hours on two cores. Needs `pip install -e ".[mutation]"`.

Each module runs in its own scratch copy, out/mutation/<module>/ (archcalc/, specs/, tests/ and a pyproject.toml
with a [tool.mutmut] section naming that one file and its tests), so runs never touch the checkout and a module's
results stay there for `mutmut show NAME` / `mutmut browse` (run inside that folder). mutmut records which tests
reach which function and runs only those against a mutant of it (stopping at the first failure), one worker at a
time (--workers), with OMP_NUM_THREADS=1 so that torch runs one thread in each forked worker.

The score of a module is killed / total: a mutant is killed when a test fails (or times out) with it in place;
survivors and mutants no selected test reaches count against it. Equivalent mutants, which cannot change behaviour,
are listed in docs/mutation.md and still count as not killed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"

# The fast analytic tests (no full-size torch runs; torch executes only small modules written in the tests).
KIND_TESTS = ("tests/test_kinds.py", "tests/test_kind_rules.py", "tests/test_kind_refusals.py",
              "tests/test_kind_text.py", "tests/test_window_rule.py",
              "tests/test_receptive_measured.py::test_chains_through_finer_grids",
              "tests/test_receptive_measured.py::test_straddling_windows_see_more_than_the_formula",
              "tests/test_arithmetic.py", "tests/test_golden.py", "tests/test_audit.py", "tests/test_memory.py",
              "tests/test_errors.py")
# The engine's runs share these, each with the tests that exercise it most directly first.
ENGINE_TESTS = ("tests/test_arithmetic.py", "tests/test_spec.py", "tests/test_memory.py", "tests/test_errors.py",
                "tests/test_golden.py", "tests/test_training.py", "tests/test_validate.py::test_composites_and_merges",
                "tests/test_validate_catches.py", "tests/test_engine_rules.py", "tests/test_graph.py",
                "tests/test_block_input.py", "tests/test_hardening.py", "tests/test_cli.py",
                "tests/test_engine_paths.py", "tests/test_merge_rules.py", "tests/test_memory_timeline.py")
VALIDATE_TESTS = ("tests/test_validate_catches.py", "tests/test_validate.py")

# name -> (the files mutated in one mutmut run, the tests that may kill their mutants). The score table has a row
# per file. One run shares one stats pass (which test reaches which function) among its files.
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "validate": (("archcalc/torch/validate.py",), VALIDATE_TESTS),
    "validate/measure": (("archcalc/torch/validate.py",), VALIDATE_TESTS),
    "kinds": (("archcalc/core/kinds/*.py",), KIND_TESTS),
    "analyze": (("archcalc/core/analyze.py",), ENGINE_TESTS),
    # the rest of the engine: the graph's liveness and dependency walks, the merge ops, the clipped receptive field
    "graph": (("archcalc/core/graph.py", "archcalc/core/merges.py", "archcalc/core/receptive.py"), ENGINE_TESTS),
    "memory": (("archcalc/core/memory.py",), ("tests/test_memory.py", "tests/test_engine_rules.py",
                                              "tests/test_training.py", "tests/test_validate_catches.py",
                                              "tests/test_memory_timeline.py", "tests/test_merge_rules.py")),
    "expr": (("archcalc/core/expr.py",), ("tests/test_spec.py", "tests/test_errors.py", "tests/test_hardening.py",
                                          "tests/test_set.py")),
    "spec": (("archcalc/core/spec.py",), ("tests/test_spec.py", "tests/test_errors.py", "tests/test_hardening.py")),
}
# One file of the kinds alone, with the kinds' tests: kinds/base, kinds/resize, ... (a run of all the kinds takes
# hours; one file, while its tests are being written, a fraction of that). Not in the default "all": `kinds` has
# every one of them. Each has its own scratch folder and its own row in the table.
KIND_FILES = {f"kinds/{path.stem}": ((f"archcalc/core/kinds/{path.name}",), KIND_TESTS)
              for path in sorted((ROOT / "archcalc" / "core" / "kinds").glob("*.py")) if path.stem != "__init__"}
MODULES.update(KIND_FILES)
# Where only some functions of a file are mutated (fnmatch patterns of mutmut's mutant names): validate's
# comparisons and verdict apart from its measuring side, whose mutants are many and slow to test.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "validate": ("*.x_compare__mutmut_*", "*.x_validate__mutmut_*", "*.xǁValidationǁ*"),
    "validate/measure": ("*.x_measure__mutmut_*", "*.x__training_flops__mutmut_*", "*.x__fvcore__mutmut_*",
                         "*.x__saved_run__mutmut_*"),
}

# Tests left out of every selection: full-size forward passes, and runs of every bundled spec.
DESELECT = ("tests/test_validate.py::test_full_size_cpu_run_of_one_spec",
            "tests/test_validate.py::test_spec_at_real_input_on_meta",
            "tests/test_validate.py::test_spec_reduced_on_cpu")

KILLED = {"killed", "timeout", "caught by type check"}
# mutmut's exit codes (mutmut/stats.py)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", None: "not checked"}


# A pytest plugin for the mutant runs: the fastest tests first (durations from mutmut's stats run), so that -x
# stops a killed mutant early instead of after the slow tests that happen to come first; and no cached answer
# computed before the mutant was switched on.
FAST_FIRST = """
import json
import sys
from pathlib import Path
from typing import Any

STATS = Path({stats!r})
# mutmut's trampolines put extra frames under every mutated function: the hardening test's 30 nested parentheses,
# which the evaluator refuses with a located error, would hit Python's recursion limit first in a run of expr.py.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))


def pytest_collection_modifyitems(session, config, items):
    if STATS.exists():
        durations = json.loads(STATS.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def pytest_runtest_setup(item):
    # A memoized answer outlives the mutant: mutmut forks each mutant's worker after collecting the tests, and the
    # test modules that compute their cases at import (kind.output on every example) fill window_geometry's
    # lru_cache with the unmutated code's answers, so a test asking again would never run the mutant of
    # per_axis / resolve_padding / spatial_rank behind it. Every archcalc cache starts empty for each test.
    for name, module in list(sys.modules.items()):
        if name == "archcalc" or name.startswith("archcalc."):
            for value in list(vars(module).values()):
                if getattr(value, "__module__", None) == name and callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
"""


def workdir(name: str, ref: str | None) -> Path:
    return OUT / (ref or "worktree") / name.replace("/", "-")


def _toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str, ref: str | None) -> Path:
    """A fresh scratch copy of the checkout (or of commit `ref`) for one module, with its [tool.mutmut] section."""
    paths, tests = MODULES[name]
    work = workdir(name, ref)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    folders = ("archcalc", "specs", "tests")
    if ref:  # the scores of a commit (the tests as they were then)
        archive = subprocess.run(["git", "archive", ref, *folders, "pyproject.toml"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
        for folder in folders:
            shutil.copytree(ROOT / folder, work / folder, ignore=ignore)
        shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    tests = tuple(t for t in tests if (work / t.partition("::")[0]).exists())
    args = [*tests, *(f"--deselect={t}" for t in DESELECT)]
    pyproject = (work / "pyproject.toml").read_text(encoding="utf-8")
    pyproject += f"""
[tool.mutmut]
source_paths = ["archcalc"]
only_mutate = {_toml_list(paths)}
also_copy = ["specs"]
pytest_add_cli_args_test_selection = {_toml_list(args)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:warnings", "-p", "_fast_first"]
use_git_change_detection = false
"""
    (work / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    (work / "mutants").mkdir()  # on sys.path during the runs: the plugin is found there
    stats = str(work / "mutants" / "mutmut-stats.json")
    (work / "mutants" / "_fast_first.py").write_text(FAST_FIRST.format(stats=stats), encoding="utf-8")
    return work


def _mutmut(work: Path, workers: int, names: list[str] | tuple[str, ...], log_mode: str = "w") -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COVERAGE_PROCESS_START")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    with open(work / "mutmut.log", log_mode, encoding="utf-8") as log:
        done = subprocess.run([str(MUTMUT), "run", "--max-children", str(workers), *names], cwd=work, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        print(f"   mutmut exited {done.returncode}: see {(work / 'mutmut.log').relative_to(ROOT)}", flush=True)
    return done.returncode


def run(name: str, workers: int, ref: str | None, base: str | None) -> int:
    """One mutmut run. With `base` (a ref already run), only what could have changed since: the mutants that the
    base run left alive, and every mutant of a function whose source changed; the rest keep the base's verdict
    (the tests were only added to, so a mutant killed then is killed now)."""
    work = prepare(name, ref)
    print(f"== {name}{f' at {ref}' if ref else ''}{f', re-testing what {base} left' if base else ''}: mutmut in "
          f"{work.relative_to(ROOT)}", flush=True)
    if base is None:
        return _mutmut(work, workers, FUNCTIONS.get(name, ()))
    (work / "base").write_text(base, encoding="utf-8")
    alive = sorted(k for res in results(name, base, merged=False).values() for k, status in res.items()
                   if status not in KILLED)
    code = _mutmut(work, workers, alive) if alive else 0
    changed = sorted(f"{module}.{fn}__mutmut_*" for module, fn in changed_functions(name, base))
    if changed:
        code |= _mutmut(work, workers, changed, "a")
    return code


def _metas(work: Path, paths: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """file -> mutmut's .meta data of the file, for the files mutated in `work`."""
    mutants = work / "mutants"
    return {meta.relative_to(mutants).as_posix()[:-len(".meta")]: json.loads(meta.read_text(encoding="utf-8"))
            for pattern in paths for meta in sorted(mutants.glob(pattern + ".meta"))}


def changed_functions(name: str, base: str) -> set[tuple[str, str]]:
    """(module, mangled function) whose source differs between the base run and the working tree's run."""
    paths, _ = MODULES[name]
    before, now = _metas(workdir(name, base), paths), _metas(workdir(name, None), paths)
    changed = set()
    for path, data in now.items():
        module = path[:-len(".py")].replace("/", ".")
        old = before.get(path, {}).get("hash_by_function_name", {})
        changed |= {(module, fn) for fn, h in data["hash_by_function_name"].items() if old.get(fn) != h}
    return changed


def results(name: str, ref: str | None, merged: bool = True) -> dict[str, dict[str, str]]:
    """file -> {mutant name -> status}, from mutmut's .meta files of the run's last run (empty: never run). A run
    that re-tested what a base run left (`--since`) takes the base's verdict for every mutant it did not run."""
    paths, _ = MODULES[name]
    patterns = FUNCTIONS.get(name, ("*",))
    work = workdir(name, ref)
    base = (work / "base").read_text(encoding="utf-8") if merged and (work / "base").exists() else None
    before = results(name, base, merged=False) if base else {}
    changed = changed_functions(name, base) if base else set()
    found = {}
    for path, data in _metas(work, paths).items():
        module = path[:-len(".py")].replace("/", ".")
        res = {}
        for key, code in data["exit_code_by_key"].items():
            if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                continue
            status = STATUS.get(code, "suspicious")
            fn = key[len(module) + 1:].rsplit("__mutmut_", 1)[0]
            if status == "not checked" and base and (module, fn) not in changed:
                status = before.get(path, {}).get(key, status)
            res[key] = status
        if res:
            found[path] = res
    return found


def function_of(mutant: str) -> str:
    """'archcalc.torch.validate.x_compare__mutmut_3' -> 'compare'; methods: 'Conv.cost'."""
    tail = mutant.rsplit(".", 1)[-1]
    match = re.fullmatch(r"(?:x(?:ǁ(\w+)ǁ)?_)?(\w+?)__mutmut_\d+", tail)
    if match is None:
        return tail
    cls, func = match.groups()
    return f"{cls}.{func}" if cls else func


def score_rows(names: list[str], ref: str | None) -> list[tuple[str, Counter[str]]]:
    rows = []
    for name in names:
        found = results(name, ref)
        for path, res in found.items():
            label = path.removeprefix("archcalc/")
            if name in FUNCTIONS:
                label += " (" + ("comparisons and verdict" if name == "validate" else "measuring") + ")"
            rows.append((label, Counter(res.values())))
            if name == "validate":  # compare() alone: issue 9's target is all of its mutants killed
                rows.append((f"{label[:-len(' (comparisons and verdict)')]}: compare()",
                             Counter(s for k, s in res.items() if function_of(k) == "compare")))
        if len(found) > 1:
            rows.append((f"{name} (all)", sum((Counter(r.values()) for r in found.values()), Counter())))
    return rows


def table(names: list[str], markdown: bool, ref: str | None) -> str:
    head = ("module", "killed", "survived", "no tests", "not run yet", "total", "score")
    lines = []
    for name, c in score_rows(names, ref):
        killed = sum(c[s] for s in KILLED)
        total = sum(c.values())
        left = c["not checked"]
        score = f"{100 * killed / total:.1f} %" if total else "-"
        if left:  # a run still going (or stopped): the score of what was tested so far
            score = f"({100 * killed / (total - left):.1f} % of {total - left})" if total > left else "-"
        other = total - killed - c["survived"] - c["no tests"] - left
        lines.append((name, str(killed), str(c["survived"] + other), str(c["no tests"]), str(left), str(total),
                      score))
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(r))) + " |" for r in lines]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [head, *lines])


def survivors(name: str, ref: str | None) -> None:
    work = workdir(name, ref)
    for res in results(name, ref).values():
        for key, status in sorted(res.items()):
            if status not in KILLED:
                shown = subprocess.run([str(MUTMUT), "show", key], cwd=work, capture_output=True, text=True)
                print(shown.stdout or f"# {key}: {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module names (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--table", action="store_true", help="print the table of the last runs; run nothing")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown")
    parser.add_argument("--survivors", action="store_true", help="show the surviving mutants' diffs; run nothing")
    parser.add_argument("--ref", help="test a commit's code with its own tests (e.g. the scores before a change)")
    parser.add_argument("--since", metavar="REF", help="re-test only what the run of REF (--ref REF) left alive, "
                        "and the mutants of functions changed since; the rest keep REF's verdict")
    parser.add_argument("--workers", type=int, default=1, help="mutants tested at once (default 1)")
    ns = parser.parse_args()
    unknown = [m for m in ns.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}, or one kinds file: "
                     f"{', '.join(KIND_FILES)}")
    names = ns.modules or [name for name in MODULES if name not in KIND_FILES]
    if ns.list:
        for name, (paths, tests) in MODULES.items():
            if name in KIND_FILES:
                continue
            print(f"{name:16} {' '.join(paths)} {' '.join(FUNCTIONS.get(name, ()))}\n{'':16} {' '.join(tests)}")
        print(f"{'kinds/FILE':16} one file of the kinds alone, with the kinds' tests: {', '.join(KIND_FILES)}")
        return 0
    if ns.survivors:
        for name in names:
            survivors(name, ns.ref)
        return 0
    failed = 0
    if not ns.table:
        if not MUTMUT.exists():
            print(f"error: {MUTMUT} not found; pip install -e '.[mutation]'", file=sys.stderr)
            return 2
        for name in names:
            failed |= run(name, ns.workers, ns.ref, ns.since) != 0
    print(f"mutmut {metadata.version('mutmut')}, {ns.ref or 'the working tree'}")
    print(table(names, ns.markdown, ns.ref))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
