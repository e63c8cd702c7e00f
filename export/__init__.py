"""Export of trained networks (``nst_deploy.export``): TorchScript, ONNX, metadata, verification.

See :mod:`nst_deploy.export.core`; the command line is ``nst-export``. The names below load on first use,
so that :mod:`nst_deploy.export.triton` (used by ``nst serve``) does not import torch.
"""

import importlib

__all__ = ["FORMATS", "PRECISIONS", "export_model", "export_onnx", "export_torchscript", "verify", "write_triton_repo"]


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(".triton" if name == "write_triton_repo" else ".core", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
