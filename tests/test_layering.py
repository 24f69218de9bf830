"""The packages form layers: core <- kernels <- export <- runtime <- training. A module imports only from its own
package or the layers below, at the top of the file or inside a function alike, so there is no import cycle
between packages, hidden or not (the `train` and `eval` commands reach the CLI through entry points)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "kernels", "export", "runtime", "training")


def imported_packages(path: Path) -> set[str]:
    """The flowsr packages a module imports anywhere in it (absolute or relative imports)."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.add(package)
                continue
            if node.level > 1:  # from ..other: the sibling package named next
                names = [f"flowsr.{node.module}"] if node.module else []
            else:
                names = [node.module or ""]
        else:
            continue
        found.update(name.split(".")[1] for name in names if name.startswith("flowsr.") and name.count(".") >= 1)
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_packages_import_only_their_layer_and_below(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    upward = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - allowed)
        for path in sorted((ROOT / package).glob("*.py"))
        if imported_packages(path) - allowed
    }
    assert not upward, f"imports from a layer above {package}: {upward}"


def test_the_check_sees_function_local_imports(tmp_path):
    """The walk reaches imports inside functions, where a cycle would hide."""
    module = tmp_path / "core" / "m.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from flowsr.runtime.cli import main\n    from .errors import FlowsrError\n")
    assert imported_packages(module) == {"runtime", "core"}
