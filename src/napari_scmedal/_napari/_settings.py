"""Widgets remember their last settings in a small JSON file in the user config directory.

The directory is ``$NAPARI_SCMEDAL_CONFIG_DIR`` when set (tests use a temporary one), else the
platform's user config dir (``~/.config/napari-scmedal`` on Linux).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("NAPARI_SCMEDAL_CONFIG_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_config_dir  # installed with napari
    except ImportError:  # pragma: no cover
        return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "napari-scmedal"
    return Path(user_config_dir("napari-scmedal", appauthor=False))


def settings_path() -> Path:
    return config_dir() / "widget_settings.json"


def _read_all() -> dict:
    try:
        return json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}


def load_settings(section: str) -> dict:
    """Last saved settings of one widget (empty dict when none or unreadable)."""
    data = _read_all().get(section, {})
    return data if isinstance(data, dict) else {}


def save_settings(section: str, values: dict) -> None:
    """Store one widget's settings; failures to write are ignored (settings are a convenience)."""
    try:
        data = _read_all()
        data[section] = values
        path = settings_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    except OSError:
        pass
