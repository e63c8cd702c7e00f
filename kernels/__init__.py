"""Fused style-statistic kernels (``nst_deploy.kernels``).

One file per op (Triton kernel, launcher, autograd Function and the pure-torch reference); this
module holds the dispatch rule every op follows:

* Triton when triton imports, the tensor is on CUDA and no export/scripting is being traced;
* the pure-torch reference otherwise;
* ``NST_KERNELS=torch`` or ``NST_KERNELS=triton`` forces one (``triton`` also off CUDA, which is
  how the interpreter tests run with ``TRITON_INTERPRET=1``).

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
