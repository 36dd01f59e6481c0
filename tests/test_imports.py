"""The package import graph has no cycle.

The graph is built from the code, not from what happens to be imported at run time: every ``import`` and
``from ... import`` statement of ``gems``, ``gemsbench`` and ``baselines`` — at module level and inside functions
alike — is an edge, as is importing a package's ``__init__`` when a submodule is imported, and every module a
registry loads by name (the tables of gemsbench.analysis.registry, the methods the method registry discovers).
A cycle makes the order of imports matter and ties two modules' changes together; the one direction allowed is
down the layers (gems <- gemsbench.methods <- baselines, gemsbench.train; the harness's entry points on top)."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gems", "gemsbench", "baselines")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a (possibly relative) import inside ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _parents(name: str, importer: str) -> list[str]:
    """``name`` and the packages above it that importing it runs, less the importer's own packages (a module's
    package is being initialised when the module runs: importing from it adds no dependency)."""
    parts = name.split(".")
    chain = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [p for p in chain if not importer.startswith(p + ".")]


def registry_loaded() -> dict[str, set[str]]:
    """Modules a registry imports by name -> the registry module that imports them."""
    from gemsbench.analysis.registry import MODULES
    from gemsbench.data.registry import loader_modules
    from gemsbench.methods.registry import method_modules

    return {"gemsbench.analysis.registry": set(MODULES.values()),
            "gemsbench.data.registry": set(loader_modules()),
            "gemsbench.methods.registry": set(method_modules())}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]  # submodules imported by name
            for target in targets:
                for name in _parents(target, module):
                    if name in files and name != module:
                        graph[module].add(name)
    for registry, loaded in registry_loaded().items():
        for name in loaded:
            assert name in files, f"{registry} loads {name}, which is no module of {PACKAGES}"
            graph[registry].update(p for p in _parents(name, registry) if p in files and p != registry)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_resolve():
    assert _resolve("gemsbench.cli.train", False, 2, "config") == "gemsbench.config"
    assert _resolve("gemsbench.methods", True, 1, "base") == "gemsbench.methods.base"
    assert _resolve("gemsbench.methods.base", False, 1, None) == "gemsbench.methods"


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["gemsbench.cli.train"]  # the graph sees imports at all
    assert "gemsbench.analysis.main" in graph["gemsbench.analysis.registry"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_gems_library_imports_nothing_of_the_harness():
    graph = import_graph()
    for module, imported in graph.items():
        if module.split(".")[0] == "gems":
            assert all(name.split(".")[0] == "gems" for name in imported), (module, imported)


def test_one_atomic_write_implementation():
    """Renaming a file over another and flushing it to disk happen in gems/atomic.py only: every other writer
    goes through it (gemsbench.atomic's typed writers, the library's second-moment cache)."""
    offenders = []
    for module, path in module_files().items():
        if module == "gems.atomic":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                    and node.attr in ("replace", "rename", "fsync"):
                offenders.append(f"{module}:{node.lineno} os.{node.attr}")
    assert not offenders, offenders


def test_jobs_import_only_what_they_use():
    """The jobs that train nothing (prepare, tables, figures) start without torch or transformers, and every job
    registers every method without importing peft (only the LoRA methods use it, when they build a model): a DAG
    starts ~100 Python processes, and these imports cost seconds each."""
    import subprocess

    code = ("import sys\n"
            "import gemsbench.cli.prepare, gemsbench.cli.aggregate, gemsbench.cli.figures\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)\n"
            "assert not heavy, f'table, figure and prepare jobs imported {heavy}'\n"
            "from gemsbench.methods.registry import build_method, known_methods\n"
            "methods = [build_method(name) for name in known_methods()]\n"
            "assert 'peft' not in sys.modules, 'registering the methods imported peft'\n"
            "print(len(methods))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 10
