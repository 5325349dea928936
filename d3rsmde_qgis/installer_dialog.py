"""The dialog behind Raster > D3-RSMDE > Install Python packages…: says what is missing, runs pip (installer.py)
in a separate process with its output as the log, can be cancelled, and says plainly what failed.

The torch build follows `nvidia-smi` unless the user picks one: a GPU whose driver tools are not on PATH, or a
machine where the CPU build's index (download.pytorch.org) is blocked, still gets what it needs."""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QProcess
from qgis.PyQt.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QPlainTextEdit,
                                 QProgressBar, QVBoxLayout)

from . import installer
from .deps import missing_packages


class InstallerDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("D3-RSMDE: install Python packages")
        self.resize(760, 480)
        self.profile = QgsApplication.qgisSettingsDirPath()
        self.missing = sorted(missing_packages().keys() - {"d3rsmde"})
        found = installer.has_nvidia_driver()
        self.build = QComboBox()
        detected = "CUDA: an NVIDIA driver was found" if found else "CPU only: no NVIDIA driver was found"
        self.build.addItem(f"Automatic ({detected})", found)
        self.build.addItem("CPU only (smaller download; from download.pytorch.org)", False)
        self.build.addItem("CUDA, for NVIDIA GPUs (several GB; from PyPI)", True)
        self.needs_torch = any(name in installer.TORCH_BUILDS for name in self.missing)
        self.build.setEnabled(self.needs_torch)
        self.process: QProcess | None = None
        self.status = QLabel(self.summary())
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.AcceptRole)
        self.install_button.setEnabled(bool(self.missing))
        self.install_button.clicked.connect(self.start)
        self.buttons.rejected.connect(self.cancel_or_close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        choices = QFormLayout()
        choices.addRow("torch build:", self.build)
        layout.addLayout(choices)
        for widget in (self.progress, self.log, self.buttons):
            layout.addWidget(widget)

    def summary(self) -> str:
        if not self.missing:
            return "Every package D3-RSMDE needs is importable in this QGIS: nothing to install."
        return (f"Missing or broken: {', '.join(self.missing)}. They will be installed, pinned to tested versions, "
                f"into {installer.target_dir(self.profile)} (your QGIS profile; QGIS's own Python is not "
                f"touched). Downloads can take several minutes.")

    def command(self) -> list[str]:
        """The pip command for what is missing, with the torch build chosen in the dialog."""
        return installer.pip_command(self.missing, self.profile, cuda=bool(self.build.currentData()))

    def start(self) -> None:
        command = self.command()
        self.log.appendPlainText("$ " + " ".join(command))
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self.read_output)
        self.process.finished.connect(self.finished)
        self.process.errorOccurred.connect(self.failed_to_start)
        self.progress.setRange(0, 0)  # pip reports no overall fraction: busy until it ends
        self.install_button.setEnabled(False)
        self.build.setEnabled(False)
        self.buttons.button(QDialogButtonBox.Close).setText("Cancel")
        self.process.start(command[0], command[1:])

    def read_output(self) -> None:
        self.log.appendPlainText(bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace").rstrip())

    def failed_to_start(self, error) -> None:
        if error == QProcess.FailedToStart:
            self.done_with(f"Could not start {self.process.program()}: {self.process.errorString()}")

    def finished(self, code: int, status) -> None:
        if status == QProcess.CrashExit:
            self.done_with("Cancelled: nothing usable was installed; run it again to finish.")
        elif code == 0:
            installer.add_to_path(self.profile)
            still = sorted(missing_packages().keys() - {"d3rsmde"})
            self.done_with("Installed. Restart QGIS to use them." if still else
                           "Installed: D3-RSMDE's algorithms can run now.")
        else:
            self.done_with(f"Installation failed (pip exit {code}). {installer.failure_hint(self.log.toPlainText())}")

    def done_with(self, message: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(message)
        self.log.appendPlainText(message)
        self.buttons.button(QDialogButtonBox.Close).setText("Close")
        self.install_button.setEnabled(bool(self.missing))
        self.build.setEnabled(self.needs_torch)

    def cancel_or_close(self) -> None:
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            self.process.kill()
        else:
            self.reject()
