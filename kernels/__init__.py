"""Fused style-statistic kernels (``nst_deploy.kernels``).

Layout: one public module per op (``gram``, ``masked_gram``, ``autocorr``, ``local_gram``) holding its
pure-torch reference, launcher, autograd Function and public functions; its Triton kernels in a
private ``_<op>_triton`` module, imported on first use; ``_dispatch`` (the backend rule below),
``_launch`` (launch helpers), ``_tiles_triton`` (tile code the Gram kernels share) and ``_syrk`` with
``csrc/`` (the cuBLAS SYRK Gram extension, built on first use). Errors are
:class:`nst_deploy.errors.KernelError`.

Every op follows one dispatch rule:

* Triton when triton imports, the tensor is on CUDA and no export/scripting is being traced;
* the pure-torch reference otherwise;
* ``NST_KERNELS=torch``, ``triton`` or ``syrk`` forces one (``triton`` off CUDA only in Triton's
  interpreter, ``TRITON_INTERPRET=1``, which is how the CPU tests run).

Importing this package never imports triton and never initializes CUDA.
"""

from ._dispatch import BACKENDS, choose_backend, has_triton, is_exporting
from .autocorr import (
    AutocorrSpectrum,
    autocorr,
    autocorr_fft,
    autocorr_ref,
    autocorr_spectrum,
    autocorr_style_loss,
    autocorr_style_loss_ref,
    require_same_feature_size,
)
from .gram import gram, gram_loss, gram_loss_ref, gram_ref
from .local_gram import local_gram, local_gram_loss, local_gram_loss_ref, local_gram_ref
from .masked_gram import masked_gram, masked_gram_ref, masked_gram_style_loss, masked_gram_style_loss_ref

__all__ = [
    "AutocorrSpectrum",
    "BACKENDS",
    "autocorr",
    "autocorr_fft",
    "autocorr_ref",
    "autocorr_spectrum",
    "autocorr_style_loss",
    "autocorr_style_loss_ref",
    "choose_backend",
    "gram",
    "gram_loss",
    "gram_loss_ref",
    "gram_ref",
    "has_triton",
    "is_exporting",
    "local_gram",
    "local_gram_loss",
    "local_gram_loss_ref",
    "local_gram_ref",
    "masked_gram",
    "masked_gram_ref",
    "masked_gram_style_loss",
    "masked_gram_style_loss_ref",
    "require_same_feature_size",
]
