"""The package's shape, checked statically with ``ast`` (nothing under ``src/`` is imported):

- no import cycle among radfusion modules;
- no private name (leading underscore) imported from, or reached into, another radfusion module;
- each stage imports only itself and earlier stages, so data flows one way;
- no source file over :data:`MAX_LINES` lines.

Every import counts, also one inside a function or under ``if TYPE_CHECKING:``: a deferred import still
makes the importing module depend on the imported one, and deferring is the usual way a cycle or a
backwards dependency gets hidden. Failures list ``file:line`` for each offending import.

The checks are functions of a source root, so ``test_checks_catch_planted_faults`` can run them on a small
fake package with known faults: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from textwrap import dedent

from helpers.paths import ROOT

SRC = ROOT / "src"
PACKAGE = "radfusion"
MAX_LINES = 400

#: The pipeline stages in the order data flows through them; a stage may import only itself and the
#: stages before it. ``evaluation`` comes before models and training on purpose: it is a leaf library of
#: metric functions over prediction arrays and files; models (epoch metrics) and training (metrics.json)
#: call it, and it needs no stage's code.
STAGES = ("cache", "safe_load", "quiet", "provenance", "cohort", "imaging", "radiomics", "segmentation", "features",
          "data", "evaluation", "models", "baselines", "explain", "training", "inference")

#: Packages beside the pipeline, with the stages each may import (besides itself). ``synthetic`` makes a
#: cohort (it feeds the stages as a cohort on disk does), so it may use the cohort's types and the cache.
BESIDE = {"synthetic": ("cache", "cohort")}

#: Single module-to-module imports allowed against the order: the cohort reader makes the synthetic
#: cohort when the configured one is missing (``cohort.source: synthetic``).
ALLOWED = {("radfusion.cohort.readers", "radfusion.synthetic.generator")}


@dataclass(frozen=True)
class Import:
    """One ``import``/``from ... import`` of a radfusion module, resolved to the module it loads."""

    importer: str     # dotted name of the importing module
    where: str        # ``file:line`` of the import, the file relative to the source root's parent
    target: str       # dotted name of the imported module (a package's ``__init__`` is the package)
    name: str | None  # the name taken from ``target`` by ``from target import name``; None for a module


def module_name(path: Path, src: Path) -> str:
    """``src/radfusion/data/splits.py`` → ``radfusion.data.splits``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def parsed(src: Path) -> tuple[tuple[Path, str, ast.Module], ...]:
    """``(file, module name, syntax tree)`` of every file of the package under ``src``."""
    files = sorted((src / PACKAGE).rglob("*.py"))
    assert files, f"no Python files under {src / PACKAGE}"
    return tuple((f, module_name(f, src), ast.parse(f.read_text(), filename=str(f))) for f in files)


@cache
def modules(src: Path) -> frozenset[str]:
    return frozenset(name for _, name, _ in parsed(src))


def resolve(base: str, known: frozenset[str]) -> str:
    """The longest prefix of ``base`` that is a module or package of ours (``radfusion.x.Name`` → ``radfusion.x``)."""
    parts = base.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or base


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module ``from`` names, also for relative imports (``from ..x import y``)."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def bound_imports(file: Path, importer: str, tree: ast.Module, known: frozenset[str]
                  ) -> list[tuple[ast.stmt, str, str | None, str]]:
    """``(node, target module, name or None, local name)`` for each radfusion import anywhere in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, resolve(a.name, known), None, a.asname or a.name) for a in node.names
                      if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, importer, file.name == "__init__.py")
            if base.split(".")[0] != PACKAGE:
                continue
            for a in node.names:
                submodule = f"{base}.{a.name}"
                if submodule in known:  # `from radfusion.radiomics import engine`: the module itself
                    found.append((node, submodule, None, a.asname or a.name))
                else:
                    found.append((node, resolve(base, known), a.name, a.asname or a.name))
    return sorted(found, key=lambda item: item[0].lineno)  # ast.walk is breadth-first


@cache
def imports(src: Path) -> tuple[Import, ...]:
    """Every import of a radfusion module anywhere in the package (module level, functions, classes)."""
    known = modules(src)
    return tuple(Import(importer, f"{file.relative_to(src.parent)}:{node.lineno}", target, name)
                 for file, importer, tree in parsed(src)
                 for node, target, name, _ in bound_imports(file, importer, tree, known))


def stage(module: str) -> str:
    """``radfusion.data.splits`` → ``data``; ``radfusion.cache`` → ``cache``; the package root → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_owner(module: str) -> str | None:
    """The package a module is private to: ``radfusion.models._impl`` → ``radfusion.models`` (its siblings may
    import it); None when no part of its name is private (anyone may)."""
    parts = module.split(".")
    for k, part in enumerate(parts):
        if is_private(part):
            return ".".join(parts[:k])
    return None


# ------------------------------------------------------------------ the checks (offence lists)


def unplaced_packages(src: Path) -> list[str]:
    """Top-level packages in no stage: the stage check cannot judge their imports."""
    return sorted({stage(m) for m in modules(src)} - set(STAGES) - set(BESIDE) - {""})


def import_cycles(src: Path) -> list[str]:
    """One line per cycle, then its edges (each edge: the first import that makes it)."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules(src)}
    for imp in imports(src):
        if imp.target != imp.importer and imp.target in graph:
            graph[imp.importer].setdefault(imp.target, imp)
    lines = []
    for component in strongly_connected({m: sorted(edges) for m, edges in graph.items()}):
        lines.append("cycle among " + ", ".join(sorted(component)) + ":")
        lines += [f"  {edge.where}  {a} -> {b}" for a in sorted(component)
                  for b, edge in sorted(graph[a].items()) if b in component]
    return lines


def private_name_uses(src: Path) -> list[str]:
    """``from other import _name``, an import of a private module, or ``other_module._name``."""
    offences = [f"{i.where}  {i.importer} imports {i.name} from {i.target}" for i in imports(src)
                if i.name is not None and is_private(i.name) and i.target != i.importer]
    offences += [f"{i.where}  {i.importer} imports the private module {i.target}" for i in imports(src)
                 if private_owner(i.target) is not None
                 and not (i.importer + ".").startswith(f"{private_owner(i.target)}.")]
    known = modules(src)
    for file, importer, tree in parsed(src):
        # reaching into a module's private names through its module object is the same coupling
        aliases = {local: target for _, target, name, local in bound_imports(file, importer, tree, known)
                   if name is None}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                owner = dotted(node.value)
                target = aliases.get(owner) or (resolve(owner, known) if owner.split(".")[0] == PACKAGE else "")
                if target in known and target != importer:
                    offences.append(f"{file.relative_to(src.parent)}:{node.lineno}  {importer} uses "
                                    f"{target}.{node.attr}")
    return sorted(set(offences))


def stage_order_violations(src: Path) -> list[str]:
    order = {s: k for k, s in enumerate(STAGES)}
    offences = []
    for imp in imports(src):
        a, b = stage(imp.importer), stage(imp.target)
        if a == b or b == "" or (imp.importer, imp.target) in ALLOWED or a not in order.keys() | BESIDE.keys():
            continue  # unplaced packages are reported by unplaced_packages
        if a in BESIDE:
            ok, why = b in BESIDE[a], f"{a} may import only {', '.join(BESIDE[a])}"
        elif b in BESIDE:
            allowed = ", ".join(f"{x} -> {y}" for x, y in sorted(ALLOWED))
            ok, why = False, f"{b} sits beside the stages; the only import of it allowed is {allowed}"
        else:
            ok, why = b in order and order[b] < order[a], f"{b} is not before {a}"
        if not ok:
            offences.append(f"{imp.where}  {imp.importer} ({a}) imports {imp.target} ({b}): {why}")
    return list(dict.fromkeys(offences))  # `from x import a, b` once, not once per name


def long_files(src: Path) -> list[str]:
    counts = {f.relative_to(src.parent): len(f.read_text().splitlines()) for f in sorted(src.rglob("*.py"))}
    return [f"{path}: {n} lines" for path, n in counts.items() if n > MAX_LINES]


# ------------------------------------------------------------------ the package as it is


def test_the_scan_sees_the_package() -> None:
    """The checks pass vacuously if the scan finds nothing: it must see the package and its known imports."""
    assert not unplaced_packages(SRC), (
        f"package(s) {unplaced_packages(SRC)} are in no stage: add them to STAGES (in data-flow order) "
        "or BESIDE in tests/test_architecture.py")
    assert len(imports(SRC)) > 50
    assert any(i.importer == "radfusion.cohort.readers" and i.target == "radfusion.synthetic.generator"
               for i in imports(SRC)), "the deferred import inside cohort.readers was not seen"


def test_no_import_cycles() -> None:
    cycles = import_cycles(SRC)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_names_across_modules() -> None:
    offences = private_name_uses(SRC)
    assert not offences, "private names used outside their module:\n" + "\n".join(offences)


def test_stages_import_only_earlier_stages() -> None:
    offences = stage_order_violations(SRC)
    assert not offences, ("imports against the stage order " + " -> ".join(STAGES) + ":\n" + "\n".join(offences))


def test_no_source_file_over_the_line_limit() -> None:
    offenders = long_files(SRC)
    assert not offenders, f"files over {MAX_LINES} lines (split them by concern):\n" + "\n".join(offenders)


# ------------------------------------------------------------------ the checks on planted faults


def fake_package(root: Path, files: dict[str, str]) -> Path:
    """A ``root/src`` holding ``radfusion/<path>`` files, with an ``__init__.py`` in every folder."""
    src = root / "src"
    for rel, text in files.items():
        path = src / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = path.parent
        while folder != src:
            (folder / "__init__.py").touch()
            folder = folder.parent
        path.write_text(dedent(text))
    return src


def test_checks_catch_planted_faults(tmp_path: Path) -> None:
    src = fake_package(tmp_path, {
        "cohort/subject.py": "X = 1\n_hidden = 2\n",
        # a cycle closed by a relative import inside a function
        "cohort/readers.py": "from radfusion.cohort.subject import X\n\ndef f():\n    from .clinical import y\n",
        "cohort/clinical.py": "def y():\n    from radfusion.cohort import readers\n",
        # a backwards stage import (imaging is after cohort) under TYPE_CHECKING, and a private name
        "cohort/validate.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from radfusion.imaging.roi import ROISettings\n"
                               "from radfusion.cohort.subject import _hidden\n"),
        "imaging/roi.py": ("import radfusion.cohort.subject as subject\nfrom radfusion.cohort import readers\n"
                           "A = subject._hidden\nB = readers.X\n"),
        # synthetic may import cohort, but a stage may not import synthetic (except cohort.readers)
        "synthetic/generator.py": "from radfusion.cohort.subject import X\n",
        "radiomics/run.py": "def main():\n    from radfusion.synthetic.generator import make\n",
        "training/run.py": ("from radfusion.models.lit import M\nfrom radfusion.models._impl import Z\n"
                            + "\n" * MAX_LINES),
        "models/lit.py": "M = 1\n",
        "models/_impl.py": "Z = 1\n",
    })
    cycles = import_cycles(src)
    assert cycles[0] == "cycle among radfusion.cohort.clinical, radfusion.cohort.readers:"
    assert "  src/radfusion/cohort/readers.py:4  radfusion.cohort.readers -> radfusion.cohort.clinical" in cycles
    assert "  src/radfusion/cohort/clinical.py:2  radfusion.cohort.clinical -> radfusion.cohort.readers" in cycles
    assert len(cycles) == 3

    assert private_name_uses(src) == [
        "src/radfusion/cohort/validate.py:4  radfusion.cohort.validate imports _hidden from radfusion.cohort.subject",
        "src/radfusion/imaging/roi.py:3  radfusion.imaging.roi uses radfusion.cohort.subject._hidden",
        "src/radfusion/training/run.py:2  radfusion.training.run imports the private module radfusion.models._impl",
    ]

    order = stage_order_violations(src)
    assert len(order) == 2, order
    assert order[0].startswith("src/radfusion/cohort/validate.py:3  radfusion.cohort.validate (cohort) imports "
                               "radfusion.imaging.roi (imaging)")
    assert order[1].startswith("src/radfusion/radiomics/run.py:2  radfusion.radiomics.run (radiomics) imports "
                               "radfusion.synthetic.generator (synthetic)")

    assert long_files(src) == [f"src/radfusion/training/run.py: {MAX_LINES + 2} lines"]
    assert unplaced_packages(src) == []
    assert unplaced_packages(fake_package(tmp_path / "new", {"plots/figure.py": "X = 1\n"})) == ["plots"]


def test_allowed_and_earlier_imports_are_not_offences(tmp_path: Path) -> None:
    src = fake_package(tmp_path, {
        "cache.py": "KEY = 1\n",
        "cohort/readers.py": ("from radfusion.cache import KEY\n\ndef load():\n"
                              "    from radfusion.synthetic.generator import make\n"),
        "cohort/subject.py": "X = 1\n",
        "synthetic/generator.py": "from radfusion.cohort.subject import X\nfrom radfusion import __version__\n",
        "training/run.py": ("from radfusion.evaluation.metrics import auc\nfrom radfusion.models import lit\n"
                            "from radfusion.training import _local\nX = lit.__name__\n"),
        "training/_local.py": "",
        "evaluation/metrics.py": "def auc():\n    pass\n",
        "models/lit.py": "from radfusion.evaluation.metrics import auc\n",
    })
    assert stage_order_violations(src) == []
    assert private_name_uses(src) == []  # a private module is its own package's: training/_local.py here
    assert import_cycles(src) == [] and long_files(src) == []


# ------------------------------------------------------------------ helpers of the checks


def strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative; the components of more than one module (the cycles), in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(graph[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components, key=sorted)


def dotted(node: ast.expr) -> str:
    """``a.b.c`` for a chain of names and attributes; ``""`` for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""
