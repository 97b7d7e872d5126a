"""ProgressBars: one bar fed by training and streaming progress dicts, restarted per network or pass."""
import io
from typing import ClassVar

import pytest

from napari_scmedal.progress import ProgressBars


class FakeBar:
    """The tqdm interface ProgressBars uses, recording what happens."""

    made: ClassVar[list] = []

    def __init__(self, total=None, desc=None, unit="it", **kwargs):
        self.total, self.desc, self.unit, self.kwargs = total, desc, unit, kwargs
        self.n = 0
        self.postfix = ""
        self.closed = False
        self.resets = 0
        self.shown = []  # (n, postfix) at each update: what the bar displays
        FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k
        self.shown.append((self.n, self.postfix))

    def reset(self, total=None):
        self.n = 0
        self.resets += 1
        if total is not None:
            self.total = total

    def set_description(self, desc):
        self.desc = desc

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = s

    def close(self):
        self.closed = True


@pytest.fixture(autouse=True)
def _fresh():
    FakeBar.made = []


def epoch(model, e, max_epochs=10, **extra):
    return {"model": model, "epoch": e, "max_epochs": max_epochs, "train": {"total": 2.0 / e}, "val": {},
            "elapsed_s": 0.1 * e, "eta_s": 1.0, **extra}


def test_one_bar_reused_across_networks():
    bars = ProgressBars(FakeBar, leave=True)
    for e in (1, 2, 3):
        bars(epoch("fe", e, max_epochs=5))
    bar = bars.bar
    assert (bar.desc, bar.total, bar.n, bar.unit) == ("train FE", 5, 3, "epoch")
    assert bar.kwargs == {"leave": True} and bar.postfix == "train loss 0.6667"
    assert bar.shown == [(1, "train loss 2"), (2, "train loss 1"), (3, "train loss 0.6667")]  # each epoch's own
    bars(epoch("re", 1, max_epochs=8) | {"val": {"total": 0.5}})
    assert FakeBar.made == [bar] and bar.resets == 1  # the same bar, restarted
    assert (bar.desc, bar.total, bar.n, bar.postfix) == ("train RE", 8, 1, "val loss 0.5")
    bars(epoch("re", 4, max_epochs=8))  # jumps (epochs not reported) count in one step; none go back
    bars(epoch("re", 2, max_epochs=8))
    assert bar.n == 4
    bars.close()
    assert bar.closed and bars.bar is None
    bars(epoch("fec", 1))  # after close: a new bar
    assert len(FakeBar.made) == 2 and FakeBar.made[1].desc == "train FEC"


def test_total_from_last_epoch_follows_early_stopping():
    bars = ProgressBars(FakeBar, desc="scMEDAL {model}", total_key="last_epoch", postfix=False)
    bars(epoch("fe", 1, max_epochs=100, last_epoch=20))
    assert (bars.bar.total, bars.bar.desc, bars.bar.postfix) == (20, "scMEDAL FE", "")
    bars(epoch("fe", 2, max_epochs=100, last_epoch=25))
    assert bars.bar.total == 25 and bars.bar.n == 2
    bars(epoch("fe", 3, max_epochs=100))  # no last_epoch: the cap
    assert bars.bar.total == 100


def test_stream_prepare_passes_then_training():
    bars = ProgressBars(FakeBar)
    for k in range(3):
        bars({"pass": 1, "done": k + 1, "total": 3})
    bar = bars.bar
    assert (bar.desc, bar.total, bar.n, bar.unit) == ("read pass 1/2", 3, 3, "block")
    bars({"pass": 2, "done": 1, "total": 4})
    assert (bar.desc, bar.total, bar.n) == ("read pass 2/2", 4, 1) and bar.resets == 1
    bars(epoch("fe", 1, max_epochs=7))
    assert FakeBar.made == [bar] and (bar.desc, bar.total, bar.n, bar.unit) == ("train FE", 7, 1, "epoch")


def test_disabled_and_foreign_dicts_do_nothing():
    off = ProgressBars(FakeBar, enabled=False)
    off(epoch("fe", 1))
    off({"pass": 1, "done": 1, "total": 2})
    off.close()
    assert FakeBar.made == [] and off.bar is None
    on = ProgressBars(FakeBar)
    on({"stage": "pair", "pair": 1, "n_pairs": 2, "model": object()})  # the holdout's per-pair dict
    on({"cells_written": 10})
    on("not a dict")
    assert FakeBar.made == []
    on(epoch("fe", 1) | {"stage": "train", "pair": 0})  # the holdout's training dicts are shown
    assert on.bar.n == 1


def test_unknown_total():
    bars = ProgressBars(FakeBar)
    bars({"model": "fe", "epoch": 1})
    assert bars.bar.total is None and bars.bar.n == 1
    bars({"model": "re", "epoch": 1, "max_epochs": 0})
    assert bars.bar.total is None and bars.bar.desc == "train RE"


def test_with_real_tqdm():
    tqdm = pytest.importorskip("tqdm").tqdm
    out = io.StringIO()
    bars = ProgressBars(tqdm, file=out, leave=True, mininterval=0)
    for e in (1, 2):
        bars(epoch("fe", e, max_epochs=4))
    bar = bars.bar
    assert isinstance(bar, tqdm) and (bar.n, bar.total) == (2, 4)
    bars(epoch("re", 1, max_epochs=6))
    assert bars.bar is bar and (bar.n, bar.total) == (1, 6) and bar.desc.startswith("train RE")
    assert bar.unit == "epoch"
    bars.close()
    text = out.getvalue()
    assert "train FE" in text and "train RE" in text and "1/6" in text and "loss" in text
    assert bars.bar is None and bar.n == 1


def test_default_bar_class_is_tqdm():
    pytest.importorskip("tqdm")
    bars = ProgressBars(file=io.StringIO())
    bars(epoch("fe", 1))
    from tqdm.auto import tqdm

    assert isinstance(bars.bar, tqdm)
    bars.close()


def test_console_says_unless_quiet_and_always_warns(capsys):
    from napari_scmedal.progress import Console

    Console().say("hello")
    Console(quiet=True).say("hidden")
    Console(quiet=True, prefix="x").warn("careful")
    assert capsys.readouterr().err.splitlines() == ["[scmedal] hello", "[x] WARNING: careful"]


def test_out_of_core_model_reports_both_streaming_passes(tmp_path):
    """ScMEDAL(path, backed=True, progress=...) hands stream_prepare's block progress to the one adapter:
    both passes, each counted to its total, on one bar restarted between them."""
    from napari_scmedal.data.synthetic import make_synthetic
    from napari_scmedal.model import ScMEDAL

    p = tmp_path / "syn.h5ad"
    make_synthetic(n_cells=600, n_genes=200, n_batches=3, n_labels=2, seed=0).write_h5ad(p)
    seen = []
    bars = ProgressBars(FakeBar)

    def progress(info):
        seen.append(dict(info))
        bars(info)

    ScMEDAL(str(p), batch_key="batch", n_genes=100, backed=True, chunk_cells=128, preset="quick", progress=progress)
    passes = {info["pass"] for info in seen}
    assert passes == {1, 2}
    for k in (1, 2):
        done = [info["done"] for info in seen if info["pass"] == k]
        total = {info["total"] for info in seen if info["pass"] == k}
        assert done == list(range(1, len(done) + 1)) and total == {len(done)} and len(done) >= 5  # 600 / 128
    assert len(FakeBar.made) == 1 and bars.bar.desc == "read pass 2/2" and bars.bar.n == bars.bar.total
