"""The model widget's training report: the settings a training used and its training health.

Display only: it reads ``model.derived`` and ``model.health`` (computed by the core after ``train()`` and
stored in the model file) through :mod:`napari_scmedal._training_report`; nothing is measured here.
"""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_scmedal._training_report import (
    health_lines,
    health_problems,
    health_state,
    settings_lines,
    settings_summary,
    stop_lines,
)

#: Label styles per health state (readable on napari's dark and light themes).
STYLES = {
    "problem": "color: #ff7a1a; font-weight: bold;",
    "ok": "color: #4caf50;",
    "not checked": "color: #9e9e9e; font-style: italic;",
    "none": "",
}


class TrainingReport(QWidget):
    """Two labels: the settings the model was trained with (compact; reasons in the tooltip) and its
    training health (problems in orange, one per line)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.settings_label = QLabel()
        self.settings_label.setWordWrap(True)
        self.settings_label.setStyleSheet("color: #9e9e9e;")
        self.health_label = QLabel()
        self.health_label.setWordWrap(True)
        lay.addWidget(self.settings_label)
        lay.addWidget(self.health_label)
        self.state = "none"
        self.problems: list[str] = []
        self.clear()

    def clear(self):
        self.state, self.problems = "none", []
        for label in (self.settings_label, self.health_label):
            label.clear()
            label.setToolTip("")
            label.setVisible(False)

    def show_model(self, model) -> list[str]:
        """Show ``model``'s settings and health; return its health problems (``"FE: ..."`` sentences)."""
        derived, health, history = model.derived, model.health, model.history
        summary = settings_summary(derived)
        self.settings_label.setText(f"Trained with {summary}" if summary else "Training settings: not recorded "
                                    "in this model file")
        tip = settings_lines(derived) + [""] + stop_lines(history)
        self.settings_label.setToolTip("\n".join(tip).strip())
        self.settings_label.setVisible(True)

        self.state = health_state(health)
        self.problems = health_problems(health)
        kinds = ", ".join(k.upper() for k in (health or {}))
        if self.state == "problem":
            text = "Training health: PROBLEMS\n" + "\n".join(f"\u2022 {p}" for p in self.problems)
        elif self.state == "ok":
            text = f"Training health: ok ({kinds})"
        elif self.state == "not checked":
            text = "Training health: not checked (model file saved before the health checks existed)"
        else:
            text = ""
        self.health_label.setText(text)
        self.health_label.setStyleSheet(STYLES[self.state])
        self.health_label.setToolTip("\n".join(health_lines(health)))
        self.health_label.setVisible(bool(text))
        return list(self.problems)
