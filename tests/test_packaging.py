"""Python started in the repository root (`python -c`, `python -m pytest`, a subprocess) imports what it would anywhere.

The root's package folders hold no `__init__.py`: they are namespace portions, which Python's import system ranks
below any regular package or module of the same name on `sys.path`. So a dependency that brings a top-level `kernels`
(transformers does), `core` or `runtime` keeps its own, while flowsr is imported as `flowsr.<folder>`.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("core", "kernels", "export", "runtime", "training")


def run_in_root(code, **env):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ | env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_dependencys_top_level_packages_win_over_the_repository_folders(tmp_path):
    # Regular packages named like each folder, on sys.path after the working directory (the root), as site-packages is.
    for name in FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"ORIGIN = 'dependency {name}'\n")
    code = f"import importlib; print(*(importlib.import_module(name).ORIGIN for name in {FOLDERS!r}), sep=',')"
    assert run_in_root(code, PYTHONPATH=str(tmp_path)).strip().split(",") == [f"dependency {name}" for name in FOLDERS]


def test_peft_and_every_flowsr_module_import_from_the_repository_root():
    # Importing peft imports transformers, whose kernel integration imports a top-level `kernels` when one is installed.
    code = f"""
import importlib, pkgutil
import peft
modules = []
for folder in {FOLDERS!r}:
    package = importlib.import_module("flowsr." + folder)
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        modules.append(module.name)
print(len(modules), *sorted({{name.split(".")[1] for name in modules}}))
"""
    count, *packages = run_in_root(code).split()
    assert sorted(packages) == sorted(FOLDERS) and int(count) > 40
