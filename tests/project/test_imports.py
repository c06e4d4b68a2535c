"""The import graph of jobs/, model_zoo/ and bench/ has no circle, and points down the layers: models, then
libraries, then commands, then benchmarks; a command never imports another command.

No circle: every import, at the top of a module or inside a
function, points down. (A circle hidden in a function-level import still ties two modules into one concern.)"""

import ast

from conftest import REPO


def import_graph(with_benchmarks: bool = False) -> dict[str, set[str]]:
    files = [*REPO.glob("jobs/**/*.py"), *REPO.glob("model_zoo/**/*.py")] + ([*REPO.glob("bench/*.py")]
                                                                           if with_benchmarks else [])
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (a -> b -> ... -> a), or None: a depth-first search for an edge back to the path."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return path[path.index(child):] + [child]
            if child not in state and (circle := visit(child)):
                return circle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (circle := visit(start)):
            return circle
    return None


def test_the_checker_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_its_way_back_to_itself():
    graph = import_graph()
    assert len(graph) > 40 and graph["jobs.train"], "the graph was read"
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


# --- the layers: models, then libraries, then commands, then benchmarks ----------------------------------------

def layer(module: str, commands: set[str]) -> int:
    """0: the models (model_zoo); 1: the libraries (the rest of jobs/); 2: the commands (a job's module, the
    command line, the launcher); 3: the benchmarks (bench/)."""
    if module.startswith("model_zoo"):
        return 0
    if module.startswith("bench"):
        return 3
    return 2 if module in commands else 1


def layering_problems(graph: dict[str, set[str]], commands: set[str]) -> list[str]:
    """Imports that point up a layer, commands that import a command, and benchmarks that import a command
    (they measure the libraries, which the commands only call)."""
    problems = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if layer(target, commands) > layer(module, commands):
                problems.append(f"{module} -> {target} (up a layer)")
            elif target in commands and layer(module, commands) >= 2:
                problems.append(f"{module} -> {target} (a command imported by a command or a benchmark)")
    return sorted(problems)


def test_every_import_points_to_its_own_layer_or_below_and_no_command_imports_another():
    from jobs.__main__ import JOBS

    commands = {module for module, _ in JOBS.values()} | {"jobs.__main__", "jobs.launch"}
    graph = import_graph(with_benchmarks=True)
    assert commands <= set(graph) and any(m.startswith("bench.") for m in graph), "the graph was read"
    problems = layering_problems(graph, commands)
    assert not problems, "; ".join(problems)


def test_the_layer_check_finds_what_it_forbids():
    commands = {"jobs.train", "jobs.finetune"}
    graph = {"jobs.finetune": {"jobs.train", "jobs.checkpoint"}, "jobs.train": {"jobs.checkpoint"},
             "jobs.checkpoint": {"model_zoo.config"}, "model_zoo.config": {"jobs.errors"}, "jobs.errors": set(),
             "bench.chat": {"jobs.finetune", "jobs.checkpoint"}}
    assert layering_problems(graph, commands) == [
        "bench.chat -> jobs.finetune (a command imported by a command or a benchmark)",
        "jobs.finetune -> jobs.train (a command imported by a command or a benchmark)",
        "model_zoo.config -> jobs.errors (up a layer)"]
