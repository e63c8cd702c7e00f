// Gram matrices by cuBLAS's symmetric rank-k update (SYRK): G[b] = alpha * F[b] F[b]^T.
//
// Built on first use by nst_deploy.kernels._syrk (torch.utils.cpp_extension with ninja); one of
// the Gram providers next to the Triton kernel and torch's bmm. Plain C++ (no device code of our
// own): cuBLAS does the product, ATen the mirror of the computed triangle.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>

#include <climits>

namespace {

// Row-major F[b] (C x K, row stride K) is, to column-major cuBLAS, the K x C matrix A = F[b]^T
// with lda = K. SYRK with trans = T computes alpha * A^T A = alpha * F F^T into one triangle of
// the C x C result: cuBLAS's upper triangle, which is the row-major lower triangle.
cublasStatus_t syrk(cublasHandle_t h, int n, int k, const float* alpha, const float* a, int lda,
                    const float* beta, float* c, int ldc) {
  return cublasSsyrk(h, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, n, k, alpha, a, lda, beta, c, ldc);
}

cublasStatus_t syrk(cublasHandle_t h, int n, int k, const double* alpha, const double* a, int lda,
                    const double* beta, double* c, int ldc) {
  return cublasDsyrk(h, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, n, k, alpha, a, lda, beta, c, ldc);
}

// Sets the handle's math mode for the lifetime of the guard and restores the previous one (torch
// sets its own mode from allow_tf32 whenever it fetches the handle; this keeps ours local).
class MathModeGuard {
 public:
  MathModeGuard(cublasHandle_t h, cublasMath_t mode) : handle_(h) {
    TORCH_CUDABLAS_CHECK(cublasGetMathMode(handle_, &previous_));
    TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle_, mode));
  }
  ~MathModeGuard() { cublasSetMathMode(handle_, previous_); }
  MathModeGuard(const MathModeGuard&) = delete;
  MathModeGuard& operator=(const MathModeGuard&) = delete;

 private:
  cublasHandle_t handle_;
  cublasMath_t previous_ = CUBLAS_DEFAULT_MATH;
};

}  // namespace

// F: (B, C, K) float32 or float64 on a CUDA device. Returns the full symmetric (B, C, C) Gram
// alpha * F F^T in F's dtype, on the current stream. allow_tf32: float32 products may run on the
// TF32 tensor cores (CUBLAS_TF32_TENSOR_OP_MATH); otherwise full float32 (CUBLAS_DEFAULT_MATH).
torch::Tensor gram_syrk(const torch::Tensor& f, double alpha, bool allow_tf32) {
  TORCH_CHECK(f.is_cuda(), "gram_syrk: F must be a CUDA tensor");
  TORCH_CHECK(f.dim() == 3, "gram_syrk: F must be (B, C, K), got ", f.dim(), " dimensions");
  TORCH_CHECK(f.scalar_type() == at::kFloat || f.scalar_type() == at::kDouble,
              "gram_syrk: float32 or float64 features only, got ", f.scalar_type());
  const int64_t b = f.size(0), c = f.size(1), k = f.size(2);
  TORCH_CHECK(c <= INT_MAX && k <= INT_MAX, "gram_syrk: C and K must fit in 32 bits");
  const c10::cuda::CUDAGuard guard(f.device());
  const torch::Tensor fc = f.contiguous();
  // Zeros: SYRK writes one triangle and leaves the other as it is.
  torch::Tensor out = torch::zeros({b, c, c}, f.options());
  if (b == 0 || c == 0 || k == 0) {
    return out;
  }
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  const MathModeGuard mode(handle, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gram_syrk", [&] {
    const scalar_t a = static_cast<scalar_t>(alpha);
    const scalar_t zero = 0;
    const scalar_t* src = fc.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < b; ++i) {
      TORCH_CUDABLAS_CHECK(syrk(handle, static_cast<int>(c), static_cast<int>(k), &a, src + i * c * k,
                                static_cast<int>(k), &zero, dst + i * c * c, static_cast<int>(c)));
    }
  });
  // Mirror: L + L^T doubles the diagonal exactly, halving it restores it exactly.
  torch::Tensor g = out + out.transpose(1, 2);
  g.diagonal(0, 1, 2).mul_(0.5);
  return g;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gram_syrk", &gram_syrk, "alpha * F F^T of (B, C, K) CUDA features by cuBLAS SYRK",
        pybind11::arg("f"), pybind11::arg("alpha") = 1.0, pybind11::arg("allow_tf32") = false);
}
