// Weight-only int8 linear layer for decoding on a CPU: y = x W^T with W stored as int8 rows and one scale per
// row. Written here because PyTorch's own kernel (aten::_weight_int8pack_mm) streams the weights at about half
// the machine's bandwidth at batch 1 and does not reuse a loaded weight across rows at batch 8 (see
// bench/RESULTS.md, issue 21). Here each int8 weight is read from memory once per call, whatever the rows.
//
// Activations are quantized per row to 14-bit integers (|q| <= 8191; bf16 activations carry 8 significant
// bits, so this adds ~1e-4 of a row's largest value) and each int8 weight is widened to 16 bits: one VNNI
// instruction (vpdpwssd) then multiplies and sums 32 pairs into 16 int32 lanes, against one load, two
// widenings and one fp32 multiply-add per 16 weights in floating point. 14 bits keep each lane's sum below
// 2^31 for K up to 32768 (K / 32 products of at most 8191 x 128 each, in each of two sums); the lanes are
// added as floats.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kRowsPerBlock = 4;  // rows of x that share each loaded weight (8 measured no faster)
constexpr float kActivationLevels = 8191.0f;

#if defined(__AVX512BW__)
// sums + the pairwise products of x and w (32 int16 pairs into 16 int32 lanes): one instruction with VNNI
inline __m512i multiply_add(__m512i sums, __m512i x, __m512i w) {
#if defined(__AVX512VNNI__)
  return _mm512_dpwssd_epi32(sums, x, w);
#else
  return _mm512_add_epi32(sums, _mm512_madd_epi16(x, w));
#endif
}

// The 16 int32 lanes of two sums, added as floats: each lane stays below 2^31, their total need not (K x 8191 x
// 128); the result is a float anyway, and fp32 adds ~1e-7 of it where the 14-bit activations add ~1e-4
inline float sum_lanes(__m512i first, __m512i second) {
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_cvtepi32_ps(first), _mm512_cvtepi32_ps(second)));
}
#endif

// acc[m] = sum_k xq[m][k] * w[k] for MB rows of xq and one weight row. The weight row is read as one stream
// (four rows read side by side ran at ~60% of this speed here), in two halves of 32 with their own sums so
// that consecutive multiply-adds do not wait for each other.
template <int MB>
void dot_rows(const int16_t* xq, int64_t K, const int8_t* w, float acc[MB]) {
  int64_t k = 0;
#if defined(__AVX512BW__)
  __m512i sums[MB][2];
  for (int m = 0; m < MB; ++m) sums[m][0] = sums[m][1] = _mm512_setzero_si512();
  for (; k + 64 <= K; k += 64) {
    const __m512i low = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    const __m512i high = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 32)));
    for (int m = 0; m < MB; ++m) {
      sums[m][0] = multiply_add(sums[m][0], _mm512_loadu_si512(xq + m * K + k), low);
      sums[m][1] = multiply_add(sums[m][1], _mm512_loadu_si512(xq + m * K + k + 32), high);
    }
  }
  for (int m = 0; m < MB; ++m) acc[m] = sum_lanes(sums[m][0], sums[m][1]);
#else
  for (int m = 0; m < MB; ++m) acc[m] = 0.0f;
#endif
  for (; k < K; ++k)
    for (int m = 0; m < MB; ++m) acc[m] += float(int32_t(xq[m * K + k]) * int32_t(w[k]));
}

template <int MB, typename Out>
void output(const int16_t* xq, const float* xscale, int64_t K, const int8_t* w, float scale, int64_t N,
            Out* y) {
  float acc[MB];
  dot_rows<MB>(xq, K, w, acc);
  for (int m = 0; m < MB; ++m) y[m * N] = Out(acc[m] * xscale[m] * scale);
}

// Weight rows [n_begin, n_end) against every row of x: each weight row is loaded from memory once and stays in
// the L1 cache while the blocks of up to 4 rows of x pass over it.
template <typename Out>
void output_rows(const int16_t* xq, const float* xscale, int64_t M, int64_t K, const int8_t* w,
                 const float* scales, int64_t n_begin, int64_t n_end, int64_t N, Out* y) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t m = 0; m < M; m += kRowsPerBlock) {
      const int16_t* xm = xq + m * K;
      const float* sm = xscale + m;
      Out* ym = y + m * N + n;
      switch (std::min<int64_t>(kRowsPerBlock, M - m)) {
        case 4: output<4>(xm, sm, K, w + n * K, scales[n], N, ym); break;
        case 3: output<3>(xm, sm, K, w + n * K, scales[n], N, ym); break;
        case 2: output<2>(xm, sm, K, w + n * K, scales[n], N, ym); break;
        default: output<1>(xm, sm, K, w + n * K, scales[n], N, ym); break;
      }
    }
  }
}

// Each row of x (float or bfloat16) as 14-bit integers and its scale (largest |x| / 8191; a row of zeros gets
// scale 0), read from x as it is: no float copy of it is made.
template <typename In>
void quantize_rows(const In* x, int64_t M, int64_t K, int16_t* xq, float* xscale) {
  for (int64_t m = 0; m < M; ++m) {
    const In* row = x + m * K;
    float largest = 0.0f;
    for (int64_t k = 0; k < K; ++k) largest = std::max(largest, std::abs(float(row[k])));
    const float inverse = largest > 0.0f ? kActivationLevels / largest : 0.0f;
    for (int64_t k = 0; k < K; ++k) xq[m * K + k] = int16_t(std::nearbyint(float(row[k]) * inverse));
    xscale[m] = largest / kActivationLevels;
  }
}

template <typename T>
void compute(const torch::Tensor& x, const int8_t* w, const float* scales, int64_t N, torch::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1);
  // the quantized rows live in per-thread buffers kept between calls: a decoding step makes ~50 of these calls
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<float> xscale;
  xq.resize(M * K);
  xscale.resize(M);
  quantize_rows(x.data_ptr<T>(), M, K, xq.data(), xscale.data());
  const int16_t* q = xq.data();
  const float* s = xscale.data();
  T* out = y.data_ptr<T>();
  // the weight rows are split between threads; each reads its rows once for every row of x
  at::parallel_for(0, N, std::max<int64_t>(1, N / 64), [&](int64_t begin, int64_t end) {
    output_rows(q, s, M, K, w, scales, begin, end, N, out);
  });
}

}  // namespace

// x: (M, K) float32 or bfloat16; weight: (N, K) int8; scales: (N,) float32. Returns (M, N) in x's dtype.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor weight, torch::Tensor scales) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "int8_linear: shapes do not match");
  TORCH_CHECK(weight.scalar_type() == torch::kChar && scales.scalar_type() == torch::kFloat, "int8_linear: dtypes");
  TORCH_CHECK(x.size(1) <= 32768, "int8_linear: at most 32768 input features (the int32 sums would overflow)");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16, "int8_linear: fp32 or bf16 x");
  auto xc = x.contiguous();
  auto w = weight.contiguous();
  auto s = scales.contiguous();
  auto y = torch::empty({x.size(0), weight.size(0)}, x.options());
  if (x.scalar_type() == torch::kFloat)
    compute<float>(xc, w.data_ptr<int8_t>(), s.data_ptr<float>(), weight.size(0), y);
  else
    compute<c10::BFloat16>(xc, w.data_ptr<int8_t>(), s.data_ptr<float>(), weight.size(0), y);
  return y;
}

TORCH_LIBRARY_FRAGMENT(llmlab_kernels, m) { m.def("int8_linear(Tensor x, Tensor weight, Tensor scales) -> Tensor"); }

TORCH_LIBRARY_IMPL(llmlab_kernels, CPU, m) { m.impl("int8_linear", &int8_linear); }
