"""Mutation testing of the core modules (issue 22): does the suite fail when the code is wrong?

mutmut plants one small bug at a time (a flipped comparison, an off-by-one, a dropped argument) in a copy of
the source and runs only the tests that execute the mutated function; a mutant the tests do not notice
"survives". Each group in `bench/mutation.toml` names the modules it mutates and the test files that cover
them, so one group fits on 2 cores in minutes. Survivors that cannot change behaviour are listed there as
equivalent, each with its reason, and leave the score; every other survivor is a missing test.

    python bench/mutate.py --list                    # the groups
    python bench/mutate.py sampling quantization     # run them (results are cached: a rerun is incremental)
    python bench/mutate.py --all --table docs/mutation.md
    python bench/mutate.py --table docs/mutation.md  # only rewrite the table from the groups' last runs

Each group runs in `.mutants/<group>/` (its own mutmut configuration and cache), never in the checkout.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "mutation.toml"
WORK = ROOT / ".mutants"
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
KILLED_EXIT_CODES = {1, 3, 36, 37, 24, -24, 152, 255, -11, -9}  # mutmut's exit codes for the statuses above
TIMEOUT_EXIT_CODES = {36, 24, -24, 152, 255}


@dataclass
class Group:
    name: str
    modules: list[str]
    tests: list[str]
    equivalent: list[dict] = field(default_factory=list)
    pytest_args: list[str] = field(default_factory=lambda: ["-m", "not compiles and not long"])


@dataclass
class Outcome:
    group: str
    total: int
    killed: int
    equivalent: list[str]
    survivors: list[str]  # the diff of each survivor that is not a named equivalent
    seconds: float
    device_only: list[str] = field(default_factory=list)  # see only_the_device_changed
    commit: str = ""  # the checkout the mutants were tried against

    @property
    def score(self) -> float:
        scored = self.total - len(self.equivalent) - len(self.device_only)
        return self.killed / scored if scored else 1.0


def load_groups() -> dict[str, Group]:
    data = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    return {name: Group(name=name, **spec) for name, spec in data["groups"].items()}


def prepare(group: Group) -> Path:
    """A folder whose pyproject.toml configures mutmut for this group alone; src and tests are links."""
    folder = WORK / group.name
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(Path("..") / ".." / name)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in pytest_ini["ini_options"].items()]
    lines += [
        "",
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {json.dumps(group.modules)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(group.tests)}",
        # tests that compile (20-30 s in a fresh process) or train for long are left out unless a group asks
        f"pytest_add_cli_args = {json.dumps(['-p', 'no:randomly', '-p', 'no:cacheprovider', '-x', *group.pytest_args])}",  # noqa: E501
        # torch is not fork-safe once its thread pools ran: workers fork from a server that only imported it
        'process_isolation = "forkserver"',
        "timeout_multiplier = 5.0",  # a mutant that loops is stopped at 5x its tests' clean CPU time, not 15x,
        "timeout_constant = 10.0",  # plus 10 s: a forked test that imports transformers first is not a loop
        "use_git_change_detection = false",
        "",
    ]
    text = "\n".join(lines)
    config = folder / "pyproject.toml"
    if not config.exists() or config.read_text(encoding="utf-8") != text:
        config.write_text(text, encoding="utf-8")
    return folder


def mutmut(folder: Path, *args: str, capture: bool = True) -> str:
    env = dict(
        os.environ,
        CI="true",
        LLMLAB_DATA=str(_data_dir()),
        PYTHONDONTWRITEBYTECODE="1",
        LLMLAB_TEST_INDUCTOR_CACHE=str(folder / "inductor"),
    )
    command = [sys.executable, "-m", "mutmut", *args]
    pipe = subprocess.PIPE if capture else None
    # its own session, so that stopping this driver stops mutmut and every worker it forked (left running,
    # they would slow the next group's tests into false timeouts)
    process = subprocess.Popen(command, cwd=folder, env=env, text=True, stdout=pipe, stderr=pipe,
                               start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        os.killpg(process.pid, signal.SIGTERM)
        raise
    if process.returncode != 0:
        tail = (stdout or "")[-2000:] + (stderr or "")[-2000:] if capture else ""
        raise SystemExit(f"error: mutmut {' '.join(args)} failed in {folder} — {tail.strip() or 'see above'}")
    return stdout or ""


def _data_dir() -> Path:
    return Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")).resolve()


def statuses(folder: Path) -> dict[str, str]:
    """Every mutant's status, from `mutmut results --all true` ("    name: status")."""
    found = {}
    for line in mutmut(folder, "results", "--all", "true").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status
    return found


def changed_lines(folder: Path, name: str) -> tuple[str, str]:
    """The lines the mutant removes and adds, stripped: the added ones name an equivalent mutant, stable as
    code moves."""
    diff = mutmut(folder, "show", name).splitlines()
    removed = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    return "\n".join(removed), "\n".join(added)


def _without_device(code: str) -> str:
    code = re.sub(r"device=[\w.\[\]]+", "", code)  # device=device, device=None, device=cache.keys[0].device
    code = re.sub(r"\.to\((?:[\w.]*device|None)\)", "", code)  # tensor.to(device), .to(p.device), .to(None)
    code = re.sub(r"^device = .*$", "device = ?", code, flags=re.M)
    code = re.sub(r"\s+", "", code)  # a dropped keyword argument leaves its comma: compare the calls alone
    while re.search(r",,|,\)|\(,", code):
        code = re.sub(r",,", ",", re.sub(r",\)", ")", re.sub(r"\(,", "(", code)))
    return re.sub(r",\s*\)", ")", code)


def only_the_device_changed(removed: str, added: str) -> bool:
    """A mutant that only drops or nulls a device: the default device is the CPU, the only one the tests have,
    so no test here can tell. Reported apart from the score, not as killed."""
    return removed != added and _without_device(removed) == _without_device(added)


def function_of(name: str) -> str:
    """`llmlab.x.y.x_func__mutmut_3` -> `func`; `...xǁClassǁmethod__mutmut_3` -> `Class.method`."""
    mangled = name.partition("__mutmut_")[0].rpartition(".")[2]
    if "ǁ" in mangled:
        _, cls, method = mangled.split("ǁ")
        return f"{cls}.{method}"
    return re.sub(r"^x_", "", mangled)


def is_equivalent(group: Group, name: str, added: str) -> bool:
    for entry in group.equivalent:
        if entry["function"] == function_of(name) and entry["added"].strip() == added:
            return True
    return False


def retest_survivors(folder: Path, group: Group, timeouts: bool = False) -> int:
    """Mark every mutant not yet killed as unchecked, so the next run tries it against today's tests (mutmut
    itself reruns only mutants whose function changed), except equivalent and device-only ones: no test can
    kill them, and each costs the full run of its tests. With `timeouts`, mutants that timed out too (a
    loaded machine makes false ones). Returns how many were marked."""
    marked = 0
    for meta in (folder / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text(encoding="utf-8"))
        codes = data["exit_code_by_key"]
        for key, code in codes.items():
            retry = code is not None and (code not in KILLED_EXIT_CODES or (timeouts and code in TIMEOUT_EXIT_CODES))
            if retry and not _settled(folder, group, key):
                codes[key], marked = None, marked + 1
        meta.write_text(json.dumps(data), encoding="utf-8")
    return marked


def keep_results_for_more_tests(folder: Path, group: Group) -> bool:
    """mutmut forgets every result when the test selection changes; tests added to a group cannot revive a killed
    mutant, so keep the verdicts and only make mutmut map every test to its functions again. True if changed."""
    stats_file = folder / "mutants" / "mutmut-stats.json"
    if not stats_file.exists():
        return False
    stats = json.loads(stats_file.read_text(encoding="utf-8"))
    selection = hashlib.sha256(repr(tuple(group.tests)).encode()).hexdigest()[:12]  # as mutmut fingerprints it
    if stats.get("config_fingerprint", {}).get("test_selection") in (None, selection):
        return False
    stats["config_fingerprint"]["test_selection"] = selection
    stats["tests_by_mangled_function_name"], stats["duration_by_test"] = {}, {}
    stats_file.write_text(json.dumps(stats), encoding="utf-8")
    return True


def _settled(folder: Path, group: Group, name: str) -> bool:
    removed, added = changed_lines(folder, name)
    return is_equivalent(group, name, added) or only_the_device_changed(removed, added)


def run_group(group: Group, max_children: int, fresh: bool, timeouts: bool = False) -> Outcome:
    folder = prepare(group)
    if fresh:
        shutil.rmtree(folder / "mutants", ignore_errors=True)
    started = time.monotonic()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"== {group.name}: {', '.join(group.modules)}", flush=True)
    if (folder / "mutants").exists():
        if keep_results_for_more_tests(folder, group):
            print("   the group's tests changed: every test is mapped to its functions again", flush=True)
        marked = retest_survivors(folder, group, timeouts)
        print(f"   retesting {marked} surviving{' or timed-out' if timeouts else ''} mutants; killed ones stay killed",
              flush=True)  # fmt: skip
    mutmut(folder, "run", "--max-children", str(max_children), capture=False)
    found = statuses(folder)
    killed = sum(status in KILLED for status in found.values())
    equivalent, device_only, survivors, matched = [], [], [], set()
    for name, status in sorted(found.items()):
        if status in KILLED:
            continue
        removed, added = changed_lines(folder, name)
        line = f"{name} ({status}): {function_of(name)}: {added!r}"
        if is_equivalent(group, name, added):
            equivalent.append(line)
            matched.add((function_of(name), added))
        elif only_the_device_changed(removed, added):
            device_only.append(line)
        else:
            survivors.append(line)
    for entry in group.equivalent:
        if (entry["function"], entry["added"].strip()) not in matched:
            print(f"   note: no surviving mutant matches the equivalent {entry['function']}: {entry['added']!r}")
    outcome = Outcome(
        group.name, len(found), killed, equivalent, survivors, time.monotonic() - started, device_only, commit.strip()
    )
    (folder / "outcome.json").write_text(json.dumps(outcome.__dict__, indent=1), encoding="utf-8")
    return outcome


def saved_outcomes(groups: dict[str, Group]) -> list[Outcome]:
    """The last outcome of every group that has run here, in the configuration's order, its survivors
    sorted again by the equivalents named since (no rerun needed to take a survivor off the score)."""
    found = []
    for name in groups:
        saved = WORK / name / "outcome.json"
        if saved.exists():
            outcome = Outcome(**json.loads(saved.read_text(encoding="utf-8")))
            named = [line for line in outcome.survivors if _names_an_equivalent(groups[name], line)]
            outcome.survivors = [line for line in outcome.survivors if line not in named]
            outcome.equivalent = outcome.equivalent + named
            found.append(outcome)
    return found


def _names_an_equivalent(group: Group, line: str) -> bool:
    """Whether a saved survivor line (`name (status): function: 'added'`) is one of the group's equivalents."""
    name, _, rest = line.partition(" (")
    added = rest.split("): ", 1)[-1].partition(": ")[2]
    try:
        return is_equivalent(group, name, ast.literal_eval(added))
    except (ValueError, SyntaxError):
        return False


def _table_rows(table: str) -> dict[str, str]:
    """The rows of a score table already written, by group (the header and its rule are not rows)."""
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("group", "---"):
            rows[cells[0]] = line.strip()
    return rows


def write_table(outcomes: list[Outcome], path: Path, groups: dict[str, Group]) -> None:
    """The score table between the markers in `path` (the rest of the file is the reader's)."""
    rows = [
        "| group | modules | mutants | killed | equivalent | device only | survived | score | at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    begin, end = "<!-- mutation-table -->", "<!-- /mutation-table -->"
    text = path.read_text(encoding="utf-8") if path.exists() else f"{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    table, _, tail = rest.partition(end)
    measured = {o.group: o for o in outcomes}
    kept = _table_rows(table)  # groups measured in an earlier checkout keep their row until they run here
    for name in groups:
        if name in measured:
            o = measured[name]
            modules = ", ".join(m.removeprefix("src/llmlab/") for m in groups[name].modules)
            counts = f"{o.total} | {o.killed} | {len(o.equivalent)} | {len(o.device_only)} | {len(o.survivors)}"
            rows.append(f"| {name} | {modules} | {counts} | {o.score:.1%} | {o.commit or '?'} |")
        elif name in kept:
            rows.append(kept[name])
    path.write_text(f"{head}{begin}\n" + "\n".join(rows) + f"\n{end}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", help="groups of bench/mutation.toml to run")
    parser.add_argument("--all", action="store_true", help="run every group")
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--table", type=Path, help="write every group's last score into the table in this file")
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="forget earlier results (after changing which tests exist for a function, or the mutmut version)",
    )
    parser.add_argument(
        "--retest-timeouts",
        action="store_true",
        help="try timed-out mutants again (a busy machine times out mutants that would have been killed or survived)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill`: unwind, so that mutmut's session is stopped
    groups = load_groups()
    if args.list:
        for g in groups.values():
            print(f"{g.name:14} {' '.join(g.modules)}  <-  {' '.join(g.tests)}")
        return 0
    chosen = list(groups) if args.all else args.groups
    unknown = [name for name in chosen if name not in groups]
    if not chosen and args.table:
        write_table(saved_outcomes(groups), args.table, groups)
        return 0
    if not chosen or unknown:
        print(f"error: unknown or no groups {unknown} — choose from {', '.join(groups)} or --all", file=sys.stderr)
        return 2
    outcomes = [run_group(groups[name], args.max_children, args.fresh, args.retest_timeouts) for name in chosen]
    for o in outcomes:
        print(
            f"\n{o.group}: {o.killed}/{o.total - len(o.equivalent) - len(o.device_only)} killed = {o.score:.1%} "
            f"({len(o.equivalent)} equivalent, {len(o.device_only)} device only, {o.seconds:.0f} s)"
        )
        for line in o.survivors:
            print(f"  survived: {line}")
    if args.table:
        write_table(saved_outcomes(groups), args.table, groups)
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ | {"score": o.score} for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
