"""Export of trained networks (``nst_deploy.export``): TorchScript, ONNX, metadata, verification.

The exporters arrive with the feed-forward networks they export; ``nst-export`` is declared now so
that its command line is stable.
"""

__all__: list[str] = []
