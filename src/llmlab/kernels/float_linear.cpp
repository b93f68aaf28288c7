// bf16 and fp32 linear layers for decoding on a CPU, a few rows at a time: y = x W^T (+ b). oneDNN's
// pre-packed kernels, which llmlab uses otherwise, read the weights at about half the machine's bandwidth at
// batch 1 here (bench/RESULTS.md, issue 21); a matrix-vector product needs nothing but streaming each
// weight row once. bf16 rows go through AVX512-BF16's vdpbf16ps (32 products per instruction, summed in
// fp32, as oneDNN sums them), fp32 rows through fused multiply-adds; each weight row is read as one stream,
// in two halves with their own sums, while up to 4 rows of x pass over it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kRowsPerBlock = 4;

inline float to_float(uint16_t bits) {
  uint32_t widened = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

// acc[m] = x[m] . w for MB rows of bf16 x (K values each) and one bf16 weight row
template <int MB>
void dot_bf16(const uint16_t* x, int64_t K, const uint16_t* w, float acc[MB]) {
  int64_t k = 0;
#if defined(__AVX512BF16__)
  __m512 sums[MB][2];
  for (int m = 0; m < MB; ++m) sums[m][0] = sums[m][1] = _mm512_setzero_ps();
  for (; k + 64 <= K; k += 64) {
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
    for (int m = 0; m < MB; ++m) {
      sums[m][0] = _mm512_dpbf16_ps(sums[m][0], (__m512bh)_mm512_loadu_si512(x + m * K + k), w0);
      sums[m][1] = _mm512_dpbf16_ps(sums[m][1], (__m512bh)_mm512_loadu_si512(x + m * K + k + 32), w1);
    }
  }
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_reduce_add_ps(_mm512_add_ps(sums[m][0], sums[m][1]));
#else
  for (int m = 0; m < MB; ++m) acc[m] = 0.0f;
#endif
  for (; k < K; ++k)
    for (int m = 0; m < MB; ++m) acc[m] += to_float(x[m * K + k]) * to_float(w[k]);
}

// acc[m] = x[m] . w for MB rows of fp32 x and one fp32 weight row
template <int MB>
void dot_fp32(const float* x, int64_t K, const float* w, float acc[MB]) {
  int64_t k = 0;
#if defined(__AVX512F__)
  __m512 sums[MB][2];
  for (int m = 0; m < MB; ++m) sums[m][0] = sums[m][1] = _mm512_setzero_ps();
  for (; k + 32 <= K; k += 32) {
    const __m512 w0 = _mm512_loadu_ps(w + k), w1 = _mm512_loadu_ps(w + k + 16);
    for (int m = 0; m < MB; ++m) {
      sums[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), w0, sums[m][0]);
      sums[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k + 16), w1, sums[m][1]);
    }
  }
  for (int m = 0; m < MB; ++m) acc[m] = _mm512_reduce_add_ps(_mm512_add_ps(sums[m][0], sums[m][1]));
#else
  for (int m = 0; m < MB; ++m) acc[m] = 0.0f;
#endif
  for (; k < K; ++k)
    for (int m = 0; m < MB; ++m) acc[m] += x[m * K + k] * w[k];
}

template <typename T, int MB, typename Out>
void output(const T* x, int64_t K, const T* w, float bias, int64_t N, Out* y) {
  float acc[MB];
  if constexpr (std::is_same_v<T, float>) dot_fp32<MB>(x, K, w, acc);
  else dot_bf16<MB>(x, K, w, acc);
  for (int m = 0; m < MB; ++m) y[m * N] = Out(acc[m] + bias);
}

template <typename T, typename Out>
void output_rows(const T* x, int64_t M, int64_t K, const T* w, const float* bias, int64_t n_begin, int64_t n_end,
                 int64_t N, Out* y) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; m += kRowsPerBlock) {
      const T* xm = x + m * K;
      Out* ym = y + m * N + n;
      switch (std::min<int64_t>(kRowsPerBlock, M - m)) {
        case 4: output<T, 4>(xm, K, w + n * K, b, N, ym); break;
        case 3: output<T, 3>(xm, K, w + n * K, b, N, ym); break;
        case 2: output<T, 2>(xm, K, w + n * K, b, N, ym); break;
        default: output<T, 1>(xm, K, w + n * K, b, N, ym); break;
      }
    }
  }
}

}  // namespace

// x: (M, K) and weight: (N, K), both bfloat16 or both float32; bias: (N,) or none. Returns (M, N) in x's dtype.
torch::Tensor float_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "float_linear: shapes do not match");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "float_linear: x and weight must have one dtype");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16, "float_linear: fp32 or bf16");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  auto xc = x.contiguous();
  auto w = weight.contiguous();
  torch::Tensor b = bias.has_value() && bias->defined() ? bias->to(torch::kFloat).contiguous() : torch::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  auto y = torch::empty({M, N}, x.options());  // written in x's dtype as it is computed: no fp32 copy
  const bool bf16 = x.scalar_type() == torch::kBFloat16;
  at::parallel_for(0, N, std::max<int64_t>(1, N / 64), [&](int64_t begin, int64_t end) {
    if (bf16)
      output_rows(reinterpret_cast<const uint16_t*>(xc.data_ptr()), M, K,
                  reinterpret_cast<const uint16_t*>(w.data_ptr()), bp, begin, end, N, y.data_ptr<c10::BFloat16>());
    else
      output_rows(xc.data_ptr<float>(), M, K, w.data_ptr<float>(), bp, begin, end, N, y.data_ptr<float>());
  });
  return y;
}


// The product a decoding step asks of a linear layer whose weight oneDNN has pre-packed: up to 3 rows through
// float_linear on the plain weight, more through oneDNN's packed kernel. One C++ operator decides, so a compiled
// step neither guards on the number of rows nor pays a Python operator's call (~14 us, 49 calls a token).
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor weight,
                            c10::optional<torch::Tensor> bias, int64_t out_features) {
  const int64_t K = x.size(-1), rows = K ? x.numel() / K : 0;
#if defined(__AVX512BF16__)
  const bool fast = true;
#else
  const bool fast = x.scalar_type() == torch::kFloat;  // bf16 without AVX512-BF16: oneDNN's kernel is faster
#endif
  if (rows <= 3 && x.scalar_type() == weight.scalar_type() && fast) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = out_features;
    return float_linear(x.reshape({rows, K}), weight, bias).reshape(shape);
  }
  static const auto onednn = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, packed, bias, std::string("none"), c10::List<c10::optional<at::Scalar>>(),
                          c10::optional<std::string>(std::string(""))};
  onednn.callBoxed(&stack);
  return stack[0].toTensor();
}

TORCH_LIBRARY_FRAGMENT(llmlab_kernels, m) {
  m.def("float_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor weight, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmlab_kernels, CPU, m) {
  m.impl("float_linear", &float_linear);
  m.impl("packed_linear", &packed_linear);
}

// oneDNN's packed weight is an MkldnnCPU tensor, which routes the whole call to that backend
TORCH_LIBRARY_IMPL(llmlab_kernels, MkldnnCPU, m) { m.impl("packed_linear", &packed_linear); }
