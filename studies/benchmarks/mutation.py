"""A small AST mutation tester (issue 17, item 5): how many single-operator changes do the fast tests catch?

Used instead of mutmut 3 because mutmut 3 rewrites the tree it runs in (``mutants/``) and needs a
``[tool.mutmut]`` section; this script only touches a *snapshot copy* of the repository that you pass as
``--root`` (``git archive <commit> | tar -x -C /tmp/snap``), never the checkout itself.

Operators, one change per mutant (the AST is re-printed with :func:`ast.unparse`):

* comparisons: ``== <-> !=``, ``< -> >=``, ``<= -> >``, ``> -> <=``, ``>= -> <``, ``is <-> is not``, ``in <-> not in``;
* arithmetic (also augmented assignment): ``+ <-> -``, ``* -> /``, ``/ -> *``, ``// -> /``, ``% -> *``, ``** -> *``;
* constants: an int or float ``x -> x + 1``, ``True <-> False`` (strings, docstrings and annotations are left alone);
* boolean operators: ``and <-> or``; unary ``not x -> x`` and ``-x -> x``.

A mutant whose line no selected test executes (measured once with ``coverage``) is counted as *not covered*
(not caught) without running. Every other mutant runs ``pytest -x -q -m "not real" <tests>`` in the snapshot, in a
fork of this process (torch, transformers and pytest already imported; ``--no-fork``: a new interpreter), with a
timeout of 4 x the clean run + 20 s: a failure kills it, a timeout counts as caught but is reported on its own.
``--sample K`` keeps every K-th mutant of each file (deterministic, ``ast.walk`` order). ``--only PREV.json`` reruns
just the mutants an earlier run with a subset of these tests did not catch. Results and method of the issue-17
run: ``studies/benchmarks/mutation.md``.

    python studies/benchmarks/mutation.py --root /tmp/snap --out /tmp/snap-result.json --sample 4 \\
        --file workbench/train.py=tests/test_core.py,tests/test_divergence.py ...
    python studies/benchmarks/mutation.py summarize before=before.json now=now.json   # markdown table
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script: this folder's kernels.py would shadow Hugging Face's `kernels` package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def log_progress(message: str) -> None:
    """A progress line on stderr. Not :func:`workbench.runs.log_progress`: this process must import nothing from the
    repository, or every forked test run would reuse the unmutated modules (see :func:`check_parent_is_clean`)."""
    print(message, file=sys.stderr, flush=True)


def check_parent_is_clean() -> None:
    """Refuse to fork test runs from a process that has imported the repository's own packages: the children would
    reuse those already-imported, unmutated modules and every mutant would 'survive'."""
    checkout = Path(__file__).resolve().parents[2]
    env = Path(sys.prefix).resolve()  # a virtual environment inside the checkout is not the repository's code

    def ours(mod) -> bool:
        file = getattr(mod, "__file__", None)
        if not isinstance(file, str) or not os.path.isabs(file):  # built-in or synthetic modules (torch.classes)
            return False
        path = Path(file).resolve()
        return path != Path(__file__).resolve() and checkout in path.parents and env not in path.parents

    loaded = sorted(name for name, mod in list(sys.modules.items()) if ours(mod))
    if loaded:
        raise SystemExit(f"the mutation runner has imported repository modules ({', '.join(loaded[:5])}); forked "
                         "test runs would not see the mutants")


CMP_SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE,
            ast.GtE: ast.Lt, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
            ast.Mod: ast.Mult, ast.Pow: ast.Mult}


@dataclass
class Mutant:
    file: str
    index: int  # position of the node in ast.walk order
    op: int  # which operand of a Compare (its ops list); 0 otherwise
    kind: str
    line: int
    description: str
    status: str = "pending"  # killed | survived | timeout | not_covered | error
    seconds: float = 0.0


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside a type annotation (never mutated)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
            a = node.args
            anns += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x]
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for ann in anns:
            if ann is not None:
                skip |= {id(n) for n in ast.walk(ann)}
    return skip


def _mutations(node: ast.AST):
    """(op, kind, description) for each mutation of one node."""
    if isinstance(node, ast.Compare):
        for i, o in enumerate(node.ops):
            if type(o) in CMP_SWAP:
                yield i, "compare", f"{type(o).__name__} -> {CMP_SWAP[type(o)].__name__}"
    elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BIN_SWAP:
        yield 0, "arith", f"{type(node.op).__name__} -> {BIN_SWAP[type(node.op)].__name__}"
    elif isinstance(node, ast.BoolOp):
        yield 0, "boolop", "And -> Or" if isinstance(node.op, ast.And) else "Or -> And"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield 0, "unary", f"drop {type(node.op).__name__}"
    elif isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            yield 0, "constant", f"{v} -> {not v}"
        elif isinstance(v, (int, float)):
            yield 0, "constant", f"{v!r} -> {v + 1!r}"


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def list_mutants(file: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _annotation_nodes(tree) | _docstring_ids(tree)
    out = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for op, kind, desc in _mutations(node):
            out.append(Mutant(file, index, op, kind, getattr(node, "lineno", 0), desc))
    return out


def mutate(source: str, m: Mutant) -> str:
    tree = ast.parse(source)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == m.index)
    parent_swap = None
    if m.kind == "compare":
        node.ops[m.op] = CMP_SWAP[type(node.ops[m.op])]()
    elif m.kind == "arith":
        node.op = BIN_SWAP[type(node.op)]()
    elif m.kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif m.kind == "unary":
        parent_swap = node.operand
    elif m.kind == "constant":
        node.value = (not node.value) if isinstance(node.value, bool) else node.value + 1
    if parent_swap is not None:  # replace the UnaryOp by its operand in its parent
        for parent in ast.walk(tree):
            for fname, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, fname, parent_swap)
                elif isinstance(value, list):
                    for j, item in enumerate(value):
                        if item is node:
                            value[j] = parent_swap
    return ast.unparse(ast.fix_missing_locations(tree))


EXTRA: list[str] = []  # e.g. ["-k", "not sigkilled"] from --k


def pytest_cmd(tests: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not real", *EXTRA, *tests]


HEAVY = ("torch", "transformers", "transformers.models.llama.modeling_llama", "pytest", "hypothesis", "numpy",
         "jaxtyping", "safetensors", "safetensors.torch", "tqdm.auto", "plotly.graph_objects")


def preload() -> None:
    """Import the third-party libraries once in this process so each forked test run starts warm. Nothing from the
    repository is imported here (the mutated modules must be imported fresh in every child)."""
    import importlib

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for name in HEAVY:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def run_tests(root: Path, tests: list[str], timeout: float | None, fork: bool) -> str:
    """'survived' | 'killed' | 'timeout' for one pytest run over ``tests`` in ``root``."""
    if not fork:
        try:
            r = subprocess.run(pytest_cmd(tests), cwd=root, capture_output=True, text=True, timeout=timeout, check=False,
                               env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONDONTWRITEBYTECODE="1"))
        except subprocess.TimeoutExpired:
            return "timeout"
        return "survived" if r.returncode == 0 else "killed"  # a collection error is a caught mutant too
    pid = os.fork()
    if pid == 0:  # child: a fresh pytest session in the snapshot, output discarded
        try:
            os.chdir(root)  # pytest's own `pythonpath` option (below) puts the snapshot first on the import path
            sys.dont_write_bytecode = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            rc = int(pytest.main([*pytest_cmd(tests)[3:], "-o", f"pythonpath={root}"]))
        except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
            rc = 99
        os._exit(rc)
    deadline = time.monotonic() + (timeout or 1e9)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.05)


def covered_lines(root: Path, file: str, tests: list[str]) -> set[int]:
    data = root / ".mutation-coverage"
    cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={file}", "-m", "pytest", "-q",
           "-p", "no:cacheprovider", "-m", "not real", *EXTRA, *tests]
    subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    import coverage

    cov = coverage.Coverage(data_file=str(data))
    cov.load()
    measured = [f for f in cov.get_data().measured_files() if f.endswith(file)]
    return set(cov.get_data().lines(measured[0]) or []) if measured else set()


def run(root: Path, files: dict[str, list[str]], sample: int, out: Path, log=log_progress, only: dict | None = None,
        fork: bool = True) -> dict:
    """Mutate, test, count. With ``only`` (mutant key -> status in an earlier run whose tests are a subset of
    these), mutants caught there keep their status without a rerun."""
    results: dict = {"root": str(root), "sample_every": sample, "files": {}}
    for file, tests in files.items():
        path = root / file
        original = path.read_text()
        t0 = time.perf_counter()
        if run_tests(root, tests, None, fork) != "survived":
            raise SystemExit(f"clean run fails for {file}: run {' '.join(pytest_cmd(tests))} in {root}")
        clean_s = time.perf_counter() - t0
        timeout = 4 * clean_s + 20  # generous: the machine is shared, a slow run is not a caught mutant
        if only is not None and not any(st == "not_covered" for (f, *_), st in only.items() if f == file):
            lines = {m.line for m in list_mutants(file, original)}  # every mutant ran before: coverage not needed
        else:
            lines = covered_lines(root, file, tests)
        for cache in root.rglob("__pycache__"):  # no stale bytecode for a mutated file
            shutil.rmtree(cache, ignore_errors=True)
        mutants = list_mutants(file, original)[::sample]
        log(f"{file}: {len(mutants)} mutants, clean run {clean_s:.1f}s, {len(lines)} covered lines")
        try:
            for k, m in enumerate(mutants):
                if m.line not in lines:
                    m.status = "not_covered"
                    continue
                prev = only.get((m.file, m.index, m.op, m.kind)) if only is not None else None
                if prev in ("killed", "timeout"):
                    m.status = prev
                    continue
                path.write_text(mutate(original, m))
                t0 = time.perf_counter()
                m.status = run_tests(root, tests, timeout, fork)
                m.seconds = round(time.perf_counter() - t0, 1)
                log(f"  [{k + 1}/{len(mutants)}] line {m.line} {m.kind} {m.description}: {m.status} ({m.seconds}s)")
        finally:
            path.write_text(original)
        counts = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "survived", "not_covered", "error")}
        caught = counts["killed"] + counts["timeout"]
        results["files"][file] = {"tests": tests, "clean_seconds": round(clean_s, 1), "n_mutants": len(mutants),
                                  "counts": counts, "score": round(caught / max(1, len(mutants)), 3),
                                  "mutants": [asdict(m) for m in mutants]}
        out.write_text(json.dumps(results, indent=1))
    total = sum(f["n_mutants"] for f in results["files"].values())
    caught = sum(f["counts"]["killed"] + f["counts"]["timeout"] for f in results["files"].values())
    results["total"] = {"n_mutants": total, "caught": caught, "score": round(caught / max(1, total), 3)}
    out.write_text(json.dumps(results, indent=1))
    return results


def summarize(runs: dict[str, str]) -> str:
    """A markdown table, one row per (run, file): killed / timeout / survived / not covered, and the score. A run may
    be several result files joined with ``+`` (runs split over snapshots); a file in more than one keeps its last."""
    rows = ["| run | file | mutants | killed | timeout | survived | not covered | score |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, paths in runs.items():
        files: dict = {}
        for path in str(paths).split("+"):
            files.update(json.loads(Path(path).read_text())["files"])
        for file, r in files.items():
            c = r["counts"]
            rows.append(f"| {label} | `{file}` | {r['n_mutants']} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                        f"{c['not_covered']} | {r['score']:.0%} |")
        total = sum(r["n_mutants"] for r in files.values())
        caught = sum(r["counts"]["killed"] + r["counts"]["timeout"] for r in files.values())
        rows.append(f"| {label} | **all files** | {total} | | | | | **{caught / max(1, total):.1%}** ({caught}) |")
    return "\n".join(rows)


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["summarize"]:  # summarize LABEL=RESULT.json ...
        print(summarize(dict(a.split("=", 1) for a in sys.argv[2:])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="snapshot copy of the repository (mutated in place)")
    p.add_argument("--file", action="append", required=True,
                   help="FILE=TEST[,TEST...]: a source file and the tests run against its mutants")
    p.add_argument("--sample", type=int, default=1, help="keep every K-th mutant of each file")
    p.add_argument("--k", help="pytest -k expression applied to every run (e.g. to drop a slow test)")
    p.add_argument("--only", type=Path, help="a previous --out: run only the mutants it lists as survived")
    p.add_argument("--no-fork", action="store_true", help="a new interpreter per run instead of a warm fork")
    p.add_argument("--list", action="store_true", help="only count the mutants")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    root = a.root.resolve()
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # restore the source file on kill (finally)
    if (root / ".git").exists():
        raise SystemExit("--root must be a snapshot copy, not a git checkout (it is mutated in place)")
    if a.k:
        EXTRA[:] = ["-k", a.k]
    files = {f.split("=", 1)[0]: f.split("=", 1)[1].split(",") for f in a.file}
    if a.list:
        for f in files:
            ms = list_mutants(f, (root / f).read_text())
            print(f, len(ms), {k: sum(m.kind == k for m in ms) for k in ("compare", "arith", "constant", "boolop", "unary")})
        return
    only = None
    if a.only:
        prev = json.loads(a.only.read_text())["files"]
        only = {(m["file"], m["index"], m["op"], m["kind"]): m["status"] for f in prev.values() for m in f["mutants"]}
    if not a.no_fork:
        preload()
        check_parent_is_clean()
    res = run(root, files, a.sample, a.out, log=lambda s: print(s, flush=True), only=only, fork=not a.no_fork)
    for f, r in res["files"].items():
        print(f, r["counts"], r["score"])
    print("total", res["total"])


if __name__ == "__main__":
    main()
