"""Train an :class:`~napari_scmedal.ScMEDAL` in a separate process (no Qt; used by the model widget).

A training thread shares its process's GIL with the GUI thread: while it runs C code that holds the
GIL (a numba compile in preprocessing, torch's first-optimizer imports, an SVD) the window cannot repaint
for tenths of a second. :func:`train_in_subprocess` runs construction, training, the latents the widget
shows (and their 2-D PCA) and the save in a fresh ``spawn`` process, so the calling process only waits on
a pipe. Per-epoch ``progress`` dicts come back as they happen, ``cancel`` is relayed through an
``multiprocessing.Event`` (training stops after the current epoch, best weights kept), warnings are
re-emitted and errors re-raised in the caller (project errors with their class). The model comes back
through a model file in a private temp folder (deleted afterwards) and gets the child's training data
(in memory: the prepared arrays; out of core: the plan over the same file), so it behaves like the model
trained in process (train again, inference without ``adata=``, counterfactual anchors, splits).
Starting the process costs a few seconds (imports).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import tempfile
import threading
import traceback
import warnings
from dataclasses import fields

import numpy as np

from .errors import ScMEDALError

#: How often the caller checks ``cancel`` and the child's liveness (seconds).
POLL_S = 0.05
MODEL_FILE = "model.safetensors"


class _RemoteTraceback(Exception):
    """The training process's traceback, attached as ``__cause__`` of a re-raised error."""

    def __str__(self):
        return self.args[0] if self.args else ""


# --------------------------------------------------------------------------------------------- caller side
def _payload(adata):
    """What the child needs to rebuild ``adata``: the object itself (pickled) when in memory; for a backed
    AnnData its file, its (possibly edited) obs and, for a view, its cell names; a path as it is."""
    if isinstance(adata, (str, os.PathLike)):
        return ("path", os.fspath(adata))
    if getattr(adata, "isbacked", False):
        names = list(adata.obs_names) if getattr(adata, "is_view", False) else None
        return ("backed", os.fspath(adata.filename), adata.obs.copy(), names)
    return ("memory", adata)


def _rebuild_error(blob, name, message, tb):
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = ScMEDALError(f"Training failed in the training process: {name}: {message}")
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def without_main_module():
    """Start children without re-running the caller's ``__main__``: ``spawn`` normally imports the main
    script again in the child, which for a napari script without an ``if __name__ == "__main__":`` guard
    would open a second viewer there. The child needs nothing from it (its target and arguments live in
    importable modules)."""
    from multiprocessing import spawn

    with _SPAWN_LOCK:
        real = spawn.get_preparation_data

        def _prep(name):
            d = real(name)
            d.pop("init_main_from_path", None)
            d.pop("init_main_from_name", None)
            return d

        spawn.get_preparation_data = _prep
        try:
            yield
        finally:
            spawn.get_preparation_data = real


def _died(code) -> ScMEDALError:
    how = "it closed its connection" if code is None else f"exit code {code}"
    if code is not None and code < 0:
        try:
            how = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    hint = " (SIGKILL usually means the system ran out of memory)" if code == -signal.SIGKILL else ""
    return ScMEDALError(f"The training process stopped unexpectedly ({how}){hint}; no model was returned. "
                        "Train again; with large data use fewer genes, or a machine with more memory.")


def _attach(model, state, adata) -> None:
    """Give the loaded ``model`` the training data the child's model had (see the module docstring)."""
    if state is None:
        return
    model._split_idx = {k: np.asarray(v, dtype=np.int64) for k, v in state["split_idx"].items()}
    if state["kind"] == "memory":
        model._adata, model._prepared = state["adata"], state["prepared"]
        return
    from .data.ondisk import OnDiskTraining, open_source

    source = adata if not isinstance(adata, (str, os.PathLike)) else state["path"]
    model._plan = OnDiskTraining(source=open_source(source, state["layer"]), **state["plan"])
    model._ondisk_input = adata if getattr(adata, "isbacked", False) else None


def train_in_subprocess(adata, model_kwargs: dict | None = None, train_kwargs: dict | None = None, *,
                        progress=None, cancel=None, threads: int | None = None, latents_out: dict | None = None,
                        poll_s: float = POLL_S):
    """``ScMEDAL(adata, **model_kwargs).train(progress=progress, cancel=cancel, **train_kwargs)``, run in a
    separate (spawned) process; returns the trained :class:`~napari_scmedal.ScMEDAL`.

    ``adata``: an in-memory AnnData (pickled to the child), a backed AnnData or a path (the child opens the
    same file; training runs out of core as in process). ``progress(info)`` receives the same per-epoch
    dicts as :meth:`ScMEDAL.train`, in the calling thread. ``cancel``: a ``threading.Event`` or a
    zero-argument callable, polled every ``poll_s``; when true the child stops after the current epoch
    with the best weights (as ``train(cancel=...)``). ``threads``: ``torch.set_num_threads`` in the child
    (default ``model_kwargs["threads"]``). ``latents_out``: a dict filled with ``{kind: (Z, Y)}`` for every
    trained kind -- the latent of every cell of ``adata`` and its 2-D PCA (:func:`napari_scmedal.embedding.
    pca_2d`). Errors raised in the child are raised here (the project's classes and builtins keep their
    class and message; the child's traceback is the ``__cause__``); warnings are re-emitted here. A child
    that dies raises :class:`~napari_scmedal.errors.ScMEDALError` naming its exit code or signal.
    """
    from ._utils import is_cancelled
    from .model import ScMEDAL

    model_kwargs, train_kwargs = dict(model_kwargs or {}), dict(train_kwargs or {})
    if threads is None:
        threads = model_kwargs.get("threads")
    ctx = mp.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="scmedal-train-")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    proc = ctx.Process(target=_child, name="scmedal-training", daemon=True,
                       args=(child_conn, stop, _payload(adata), model_kwargs, train_kwargs, threads,
                             os.path.join(folder, MODEL_FILE), latents_out is not None))
    result = error = None
    try:
        with without_main_module():
            proc.start()
        child_conn.close()  # the child holds the only writer: EOF here when it exits
        while result is None and error is None:
            if cancel is not None and not stop.is_set() and is_cancelled(cancel):
                stop.set()
            if parent_conn.poll(poll_s):
                try:
                    msg = parent_conn.recv()
                except EOFError:
                    break
                if msg[0] == "progress" and progress is not None:
                    progress(msg[1])
                elif msg[0] == "warning":
                    warnings.warn(msg[1], msg[2], stacklevel=2)
                elif msg[0] == "result":
                    result = msg[1]
                elif msg[0] == "error":
                    error = msg[1]
            elif not proc.is_alive() and not parent_conn.poll(0):
                break
        if error is not None:
            proc.join(timeout=10)
            raise _rebuild_error(*error)
        if result is None:
            proc.join(timeout=10)
            raise _died(proc.exitcode)
        # the file is complete (saved atomically before the result was sent): load while the child exits
        model = ScMEDAL.load(result["path"], device=model_kwargs.get("device"), threads=model_kwargs.get("threads"))
        _attach(model, result["state"], adata)
        if latents_out is not None:
            latents_out.update(result["latents"])
        proc.join(timeout=2)  # it has nothing left to do: one still exiting is ended below
        return model
    finally:
        if proc.is_alive():  # an error here (e.g. in progress): do not leave the child training
            stop.set()
            proc.terminate()
            proc.join(timeout=10)
        parent_conn.close()
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------- child side
def _open(payload):
    kind = payload[0]
    if kind in ("memory", "path"):  # the AnnData itself, or the file's path (the model opens it)
        return payload[1]
    import anndata as ad

    _, path, obs, names = payload
    a = ad.read_h5ad(path, backed="r")
    if names is not None:
        return a[names]
    a.obs = obs
    return a


def _state(model) -> dict:
    """The child's training data, for :func:`_attach` in the caller."""
    out = {"split_idx": {k: np.asarray(v) for k, v in model._split_idx.items()}}
    plan = getattr(model, "_plan", None)
    if plan is None:
        return {**out, "kind": "memory", "adata": model._adata, "prepared": model._prepared}
    rest = {f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "source"}
    return {**out, "kind": "disk", "plan": rest, "path": os.fspath(plan.source.path), "layer": plan.source.layer}


def _child(conn, stop, payload, model_kwargs, train_kwargs, threads, path, want_latents):
    """Entry point of the training process (module level: importable by ``spawn``)."""
    try:
        if threads:
            import torch

            torch.set_num_threads(int(threads))

        def _show(message, category, filename, lineno, file=None, line=None):
            try:
                conn.send(("warning", str(message), category))
            except Exception:  # a category the caller cannot import
                conn.send(("warning", f"{category.__name__}: {message}", UserWarning))

        warnings.showwarning = _show  # warnings passing this process's filters are re-emitted by the caller
        from .embedding import latents_2d
        from .model import ScMEDAL

        adata = _open(payload)
        model = ScMEDAL(adata, **model_kwargs)
        model.train(progress=lambda info: conn.send(("progress", info)), cancel=stop.is_set, **train_kwargs)
        latents = latents_2d(model, adata) if want_latents else {}
        model.save(path)
        conn.send(("result", {"path": path, "latents": latents, "state": _state(model)}))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)  # only what the caller can rebuild
        except Exception:
            blob = None
        try:
            conn.send(("error", (blob, type(exc).__name__, str(exc), traceback.format_exc())))
        except Exception:
            pass
    finally:
        conn.close()


__all__ = ["train_in_subprocess", "without_main_module"]
