"""``marl export``: the decentralized actor as files a robot runs alone (issue 18).

One file per agent group (``sharing=all``: one file; ``none``: one per agent; ``role``: one
per role) in ONNX and/or TorchScript, plus ``manifest.json`` and ``latency.json``, checked
against ``actor.act`` itself on observations recorded in the real env. Read in this order:

- ``policy``   the exported module: one agent's step through the family's own actor (the file interface)
- ``formats``  writing and loading ONNX and TorchScript files
- ``verify``   parity on recorded episodes, latency
- ``run``      running an export: onnxruntime actors for ``marl eval``, the manifest's checks
- ``build``    :func:`export` step by step, and the ``marl export`` command line
"""

from __future__ import annotations

from marlcli.export import build
from marlcli.export.build import export
from marlcli.export.formats import FORMATS, OPSET
from marlcli.export.policy import ExportError
from marlcli.export.run import evaluate_export, is_export, read_manifest
from marlcli.export.verify import Recorder

__all__ = ["FORMATS", "OPSET", "ExportError", "Recorder", "evaluate_export", "export", "export_main", "is_export",
           "read_manifest"]


def export_main(args: list[str]) -> int:
    """``marl export ...``: :func:`build.export_main` running this package's ``export``, looked up when
    called, so replacing ``marlcli.export.export`` (as the CLI's interrupt test does) reaches the command."""
    return build.export_main(args, run=export)
