"""Export of trained networks (``nst_deploy.export``): TorchScript, ONNX, metadata, verification.

See :mod:`nst_deploy.export.core`; the command line is ``nst-export``.
"""

from .core import FORMATS, export_model, export_onnx, export_torchscript, verify

__all__ = ["FORMATS", "export_model", "export_onnx", "export_torchscript", "verify"]
