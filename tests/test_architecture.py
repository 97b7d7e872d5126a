"""The package's shape, checked: no import cycles between its modules (in-function imports count) and no
source file over 500 lines (docs/architecture.md). That the core imports neither Qt nor napari is checked by
test_packaging (the core imports exactly its declared dependencies)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_scmedal"


def _cycles_module():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "scripts" / "import_cycles.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycles_between_modules():
    ic = _cycles_module()
    edges = ic.graph()
    assert "napari_scmedal.compare" in edges and "napari_scmedal.genomap.ensure" in edges["napari_scmedal.compare"]
    assert ic.cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    ic = _cycles_module()
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert ic.cycles(edges) == [["a", "b", "c"]]


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
