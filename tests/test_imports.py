"""The import graph of jobs/ and model_zoo/ has no circle: every import, at the top of a module or inside a
function, points down. (A circle hidden in a function-level import still ties two modules into one concern.)"""

import ast

from conftest import REPO


def import_graph() -> dict[str, set[str]]:
    files = [*REPO.glob("jobs/**/*.py"), *REPO.glob("model_zoo/**/*.py")]
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
