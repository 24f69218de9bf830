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
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=os.environ | env, capture_output=True, text=True, timeout=300
    )
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


# peft and transformers made absent, as in a base install: the path finder no longer finds them, so
# `importlib.util.find_spec` (which diffusers asks) returns None and an import raises ModuleNotFoundError.
BLOCK_TRAINING_PACKAGES = """
import importlib.machinery, sys
class WithoutTrainingPackages(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("peft", "transformers"):
            return None
        return super().find_spec(name, path, target)
sys.meta_path = [WithoutTrainingPackages if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def test_serving_runs_without_peft_and_transformers(tmp_path):
    """`flowsr sr`, `flowsr degrade`, SuperResolver and Degrader on the packaged models, with peft and transformers
    unimportable (a base install has neither): the same pixels as in this process, where both are importable."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from flowsr.runtime.degrader import Degrader
    from flowsr.runtime.super_resolver import SuperResolver

    photo = data.astronaut()[::8, ::8]  # 64 x 64
    Image.fromarray(photo).save(tmp_path / "photo.png")
    code = (
        BLOCK_TRAINING_PACKAGES
        + f"""
import importlib.util
assert importlib.util.find_spec("peft") is None and importlib.util.find_spec("transformers") is None
import numpy as np
from PIL import Image
from flowsr.runtime.cli import main
from flowsr.runtime.degrader import Degrader
from flowsr.runtime.super_resolver import SuperResolver
root = {str(tmp_path)!r}
photo = np.asarray(Image.open(root + "/photo.png"))
assert main(["sr", root + "/photo.png", "-o", root + "/sr", "--tile", "0"]) == 0
assert main(["degrade", root + "/photo.png", "-o", root + "/lr", "--scale", "2.5", "--no-noise"]) == 0
np.save(root + "/resolver.npy", SuperResolver(tile=0)(photo))
np.save(root + "/degrader.npy", Degrader()(photo, [2.5], seed=0)[0])
assert "peft" not in sys.modules and "transformers" not in sys.modules
"""
    )
    run_in_root("import sys\n" + code)
    here_sr = SuperResolver(tile=0)(photo)
    assert np.array_equal(np.load(tmp_path / "resolver.npy"), here_sr)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sr" / "photo.png")), here_sr)
    here_lr = Degrader()(photo, [2.5], seed=0)[0]
    assert np.array_equal(np.load(tmp_path / "degrader.npy"), here_lr)
    assert (tmp_path / "lr" / "2.5" / "photo_LR2.5.png").is_file()
