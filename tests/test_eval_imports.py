"""``eval/`` sits below ``experiments/``: nothing in it imports the experiment grid or report."""

import ast
from pathlib import Path

import mfdiffuser

PACKAGE = Path(mfdiffuser.__file__).parent
# each layer and the layers above it that it must not import
ABOVE = {"eval": ("experiments", "commands", "cli"), "data": ("eval", "experiments", "commands", "cli")}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_lower_layers_do_not_import_upper_ones():
    for layer, above in ABOVE.items():
        files = sorted((PACKAGE / layer).glob("*.py"))
        assert files
        for path in files:
            for name in imported_modules(path):
                for up in above:
                    assert not name.startswith(f"mfdiffuser.{up}"), f"{path.name} imports {name}"
