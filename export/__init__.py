"""Export of trained networks (``nst_deploy.export``): TorchScript, ONNX, metadata, verification.

See :mod:`nst_deploy.export.core`; the command line is ``nst-export``.
"""

from .core import FORMATS, PRECISIONS, export_model, export_onnx, export_torchscript, verify
from .triton import write_triton_repo

__all__ = ["FORMATS", "PRECISIONS", "export_model", "export_onnx", "export_torchscript", "verify", "write_triton_repo"]
