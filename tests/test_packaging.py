"""Dependencies match imports: every core dependency is imported by the Qt-free core, every third-party
module the core imports is a declared core dependency, and Qt/napari packages stay out of the core list
(issue 13, "Also": superqt and magicgui were declared but never imported)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_scmedal"
#: distribution name -> module name where they differ
MODULE_OF = {"scikit-learn": "sklearn", "pot": "ot", "pyyaml": "yaml"}


def _dist_names(reqs):
    return [re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].strip().lower() for r in reqs]


def _imports(files, top_level_only: bool = False):
    mods = set()
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m not in ("napari_scmedal", "__future__")}


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_dependencies_are_exactly_what_the_core_imports():
    core_files = [f for f in SRC.rglob("*.py") if "_napari" not in f.parts]
    core_imports = _imports(core_files)
    declared = {MODULE_OF.get(d, d) for d in _dist_names(_project()["dependencies"])}
    # optional analysis extras (harmonypy): imported only inside the functions that need them, so the core
    # imports without them and says which extra to install
    optional = {MODULE_OF.get(d, d) for d in _dist_names(_project()["optional-dependencies"]["harmony"])}
    assert not declared - core_imports, f"declared but never imported by the core: {declared - core_imports}"
    assert not core_imports - declared - optional, \
        f"imported by the core but not declared: {core_imports - declared - optional}"
    top_level = _imports(core_files, top_level_only=True)
    assert not top_level & optional, f"optional extras imported at module level: {top_level & optional}"
    assert not declared & {"qtpy", "superqt", "magicgui", "napari", "pyqt5", "pyqt6", "pyside2", "pyside6"}


def test_the_gui_layer_imports_only_declared_packages():
    gui_imports = _imports((SRC / "_napari").rglob("*.py"))
    p = _project()
    declared = {MODULE_OF.get(d, d) for d in _dist_names(p["dependencies"] + p["optional-dependencies"]["napari"])}
    assert not gui_imports - declared, f"the GUI imports undeclared packages: {gui_imports - declared}"
