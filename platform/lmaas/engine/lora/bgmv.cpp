// Gather-GEMV LoRA kernel for CPU (BGMV): every token's row times its own slot's A and B,
// read in place from the stacked bank, accumulated in float. Built by lmaas.engine.lora.kernel
// with -O3 -march=native (and -fopenmp). With AVX-512 the loops use intrinsics (bf16 dot
// products with AVX512-BF16, bf16 widened by shift and mask, software prefetch of the
// weights of the group after next); without it, plain loops of fixed-width blocks that the
// compiler vectorises. No torch headers: plain pointers, called through ctypes.
//
// One call serves a whole (possibly fused) projection:
//   for each group g (bank slot s = group_slot[g], tokens token_index[group_start[g]:...]):
//     r = slot_rank[s]                      (rows past r are zero padding: not read)
//     for each part j:
//       h[t, :r] = A[s, j*R : j*R + r, :] · x[t]
//       y[t, y_offset[j] : + out[j]] += h[t, :r] · B_j[s, :r, :]
// y is rounded once per element (float sums); x and y share a dtype, A and B another.
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using bf16 = uint16_t;

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void store(float* p, float v) { *p = v; }
inline void store(bf16* p, float v) {  // round to nearest even, like torch
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays NaN
    *p = static_cast<bf16>((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *p = static_cast<bf16>(u >> 16);
}

constexpr int kBlock = 64;  // floats per block: four 16-wide vectors

// Expand block: NVEC x 32 outputs in registers while the rows of B stream through
// (8 measured best of 4, 8, 16 for SmolLM2 shapes on an AMD EPYC, Zen 4).
#ifndef NVEC
#define NVEC 8
#endif

// sum_i w[i] * x[i], with x already in float (generic: the compiler vectorises the block).
template <typename W>
inline float dot(const W* __restrict w, const float* __restrict x, int64_t n, int64_t) {
  float acc[kBlock] = {};
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock)
    for (int l = 0; l < kBlock; ++l) acc[l] += to_float(w[i + l]) * x[i + l];
  float sum = 0.f;
  for (; i < n; ++i) sum += to_float(w[i]) * x[i];
  for (int l = 0; l < kBlock; ++l) sum += acc[l];
  return sum;
}

#if defined(__AVX512F__)
inline float dot(const float* __restrict w, const float* __restrict x, int64_t n,
                 int64_t ahead) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (ahead)
      for (int l = 0; l < 64; l += 16)
        _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + l), _MM_HINT_T1);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

inline __m512 load_bf16(const bf16* p) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

inline float dot(const bf16* __restrict w, const float* __restrict x, int64_t n, int64_t) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(load_bf16(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(load_bf16(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    a2 = _mm512_fmadd_ps(load_bf16(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
    a3 = _mm512_fmadd_ps(load_bf16(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_bf16(w + i), _mm512_loadu_ps(x + i), a0);
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) sum += to_float(w[i]) * x[i];
  return sum;
}

// Even / odd elements of 32 bf16 as two float vectors: a shift and a mask, no shuffle.
inline __m512 bf16_even(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline __m512 bf16_odd(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
#endif

#if defined(__AVX512BF16__)
// bf16 · bf16 in one instruction per 32 elements (exact products, float sums).
// `ahead` (elements, 0 = none): prefetch the same place of a later group's slot into L2.
inline float dot_bf16(const bf16* __restrict w, const bf16* __restrict x, int64_t n,
                      int64_t ahead) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (ahead) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w + i + ahead + 32), _MM_HINT_T1);
    }
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + i), (__m512bh)_mm512_loadu_si512(x + i));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + i + 32),
                          (__m512bh)_mm512_loadu_si512(x + i + 32));
  }
  for (; i + 32 <= n; i += 32)
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + i), (__m512bh)_mm512_loadu_si512(x + i));
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  for (; i < n; ++i) sum += to_float(w[i]) * to_float(x[i]);
  return sum;
}
#endif

template <typename T>
inline void load_row(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// y[o] += sum_k h[k] * b[k * ldb + o] for o in [0, n): B read row after row (sequentially),
// summed in the float buffer acc (n floats, in L1), y rounded once.
template <typename W, typename Y>
inline void expand_row(const float* __restrict h, const W* __restrict b, int64_t ldb, int r,
                       Y* __restrict y, int64_t n, float* __restrict acc) {
  for (int64_t o = 0; o < n; ++o) acc[o] = 0.f;
  for (int k = 0; k < r; ++k) {
    const W* __restrict row = b + k * ldb;
    const float hk = h[k];
    for (int64_t o = 0; o < n; ++o) acc[o] += hk * to_float(row[o]);
  }
  for (int64_t o = 0; o < n; ++o) store(y + o, to_float(y[o]) + acc[o]);
}

#if defined(__AVX512F__)
inline __m512 load_w(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_w(const bf16* p) { return load_bf16(p); }
inline __m512 load_y(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_y(const bf16* p) { return load_bf16(p); }
inline void store_y(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store_y(bf16* p, __m512 v) {
  // round to nearest even (inputs are finite sums of finite values)
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}

// y[0:32] += interleave(even, odd)
inline void add_block(bf16* y, __m512 even, __m512 odd) {
  const __m512i v = _mm512_loadu_si512(y);
  __m512i ue = _mm512_castps_si512(_mm512_add_ps(bf16_even(v), even));
  __m512i uo = _mm512_castps_si512(_mm512_add_ps(bf16_odd(v), odd));
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
  ue = _mm512_add_epi32(ue, _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(ue, 16), one), half));
  uo = _mm512_add_epi32(uo, _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(uo, 16), one), half));
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  _mm512_storeu_si512(y, _mm512_or_si512(_mm512_srli_epi32(ue, 16), _mm512_and_si512(uo, hi)));
}
inline void add_block(float* y, __m512 even, __m512 odd) {
  const __m512i idx_lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i idx_hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), _mm512_permutex2var_ps(even, idx_lo, odd)));
  _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_loadu_ps(y + 16), _mm512_permutex2var_ps(even, idx_hi, odd)));
}

// Register-blocked: NV x 16 outputs in registers, the r rows of B streamed through them
// (float B; bf16 B goes through expand_row_bf16).
template <int NV, typename W, typename Y>
inline int64_t expand_blocks_f32(const float* __restrict h, const W* __restrict b, int64_t ldb,
                                 int r, Y* __restrict y, int64_t n, int64_t ahead) {
  int64_t o = 0;
  for (; o + 16 * NV <= n; o += 16 * NV) {
    __m512 acc[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
    for (int k = 0; k < r; ++k) {
      const W* row = b + k * ldb + o;
      const __m512 hk = _mm512_set1_ps(h[k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(row + ahead + 16 * v), _MM_HINT_T1);
        acc[v] = _mm512_fmadd_ps(hk, load_w(row + 16 * v), acc[v]);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      store_y(y + o + 16 * v, _mm512_add_ps(load_y(y + o + 16 * v), acc[v]));
  }
  return o;
}

template <typename W, typename Y>
inline void expand_row_avx512(const float* __restrict h, const W* __restrict b, int64_t ldb,
                              int r, Y* __restrict y, int64_t n, float* __restrict acc,
                              int64_t ahead) {
  int64_t o = expand_blocks_f32<2 * NVEC>(h, b, ldb, r, y, n, ahead);
  o += expand_blocks_f32<1>(h, b + o, ldb, r, y + o, n - o, ahead);
  if (o < n) expand_row(h, b + o, ldb, r, y + o, n - o, acc);
}
#endif

#if defined(__AVX512F__)
// bf16 B: a block of 64 outputs as even/odd halves of two 32-element loads (no shuffles);
// y (bf16 or float) is updated once per block.
template <int NV, typename Y>
inline int64_t expand_blocks_bf16(const float* __restrict h, const bf16* __restrict b,
                                  int64_t ldb, int r, Y* __restrict y, int64_t n, int64_t ahead) {
  int64_t o = 0;
  for (; o + 32 * NV <= n; o += 32 * NV) {
    __m512 ev[NV], od[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) ev[v] = od[v] = _mm512_setzero_ps();
    for (int k = 0; k < r; ++k) {
      const bf16* row = b + k * ldb + o;
      const __m512 hk = _mm512_set1_ps(h[k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(row + ahead + 32 * v), _MM_HINT_T1);
        const __m512i w = _mm512_loadu_si512(row + 32 * v);
        ev[v] = _mm512_fmadd_ps(hk, bf16_even(w), ev[v]);
        od[v] = _mm512_fmadd_ps(hk, bf16_odd(w), od[v]);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) add_block(y + o + 32 * v, ev[v], od[v]);
  }
  return o;
}

template <typename Y>
inline void expand_row_bf16(const float* __restrict h, const bf16* __restrict b, int64_t ldb,
                            int r, Y* __restrict y, int64_t n, float* __restrict acc,
                            int64_t ahead) {
  int64_t o = expand_blocks_bf16<NVEC>(h, b, ldb, r, y, n, ahead);
  o += expand_blocks_bf16<1>(h, b + o, ldb, r, y + o, n - o, ahead);
  if (o < n) expand_row(h, b + o, ldb, r, y + o, n - o, acc);
}
#endif

// Dispatch: the fastest expand / dot this build has for the dtypes.
template <typename W, typename Y>
inline void expand(const float* h, const W* b, int64_t ldb, int r, Y* y, int64_t n, float* acc,
                   int64_t ahead) {
#if defined(__AVX512F__)
  if constexpr (sizeof(W) == 2) expand_row_bf16(h, b, ldb, r, y, n, acc, ahead);
  else expand_row_avx512(h, b, ldb, r, y, n, acc, ahead);
#else
  expand_row(h, b, ldb, r, y, n, acc);
#endif
}

template <typename X, typename W>
constexpr bool kDirectDot =
#if defined(__AVX512BF16__)
    sizeof(X) == 2 && sizeof(W) == 2;
#else
    false;
#endif

template <typename X, typename W>
void run(const X* x, int64_t x_stride, int64_t in_features, const W* a, int64_t rank,
         int64_t num_parts, const W* const* b, const int64_t* out, X* y, int64_t y_stride,
         const int64_t* y_offset, const int64_t* slot_rank, const int64_t* group_slot,
         const int64_t* group_start, const int64_t* token_index, int64_t num_groups,
         int num_threads) {
  const int64_t a_slot = num_parts * rank * in_features;
  // Two phases, each a pass in slot order over one stacked tensor: all shrinks (A), then
  // the expands part by part (B_j), so that the hardware prefetcher sees long streams.
  // Groups write disjoint rows of h and y: they are shared out among threads (OpenMP, the
  // same runtime as torch's: the library is linked against the libgomp torch has loaded).
  std::vector<float> h(group_start[num_groups] * num_parts * rank);
  auto rank_of = [&](int64_t g) {
    const int64_t r = slot_rank[group_slot[g]];
    return static_cast<int>(r < rank ? r : rank);
  };
  // Slots from group g to the group after next: its weights are prefetched while g computes
  // (two groups ahead measured faster than one or three).
  auto step_of = [&](int64_t g) {
    return g + 2 < num_groups ? group_slot[g + 2] - group_slot[g] : 0;
  };
#if defined(_OPENMP)
#pragma omp parallel num_threads(num_threads) if (num_threads > 1 && num_groups > 1)
#endif
  {
    std::vector<float> xf, acc;
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
    for (int64_t g = 0; g < num_groups; ++g) {
      const int r = rank_of(g);
      if (r <= 0) continue;
      const int64_t begin = group_start[g], n = group_start[g + 1] - begin;
      const int64_t a_ahead = step_of(g) * a_slot;
      if constexpr (!kDirectDot<X, W>) {
        xf.resize(n * in_features);
        for (int64_t i = 0; i < n; ++i)
          load_row(x + token_index[begin + i] * x_stride, xf.data() + i * in_features,
                   in_features);
      }
      // Shrink: each row of A is read from memory once, then reused from L1 by every token.
      const W* as = a + group_slot[g] * a_slot;
      for (int64_t j = 0; j < num_parts; ++j)
        for (int k = 0; k < r; ++k) {
          const W* row = as + (j * rank + k) * in_features;
          float* hk = h.data() + (begin * num_parts + j) * rank + k;
          for (int64_t i = 0; i < n; ++i) {
#if defined(__AVX512BF16__)
            if constexpr (kDirectDot<X, W>) {
              hk[i * num_parts * rank] = dot_bf16(row, x + token_index[begin + i] * x_stride,
                                                  in_features, i == 0 ? a_ahead : 0);
              continue;
            }
#endif
            if constexpr (!kDirectDot<X, W>)
              hk[i * num_parts * rank] =
                  dot(row, xf.data() + i * in_features, in_features, i == 0 ? a_ahead : 0);
          }
        }
    }
    // Expand, by column chunks: each chunk of B (r rows x 32 * NVEC) is read from memory
    // once, then reused from L1 by every token of the group.
    for (int64_t j = 0; j < num_parts; ++j) {
      acc.resize(out[j]);
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (int64_t g = 0; g < num_groups; ++g) {
        const int r = rank_of(g);
        if (r <= 0) continue;
        const int64_t begin = group_start[g], n = group_start[g + 1] - begin;
        const W* bs = b[j] + group_slot[g] * rank * out[j];
        const int64_t ahead = step_of(g) * rank * out[j];
        constexpr int64_t kChunk = 32 * NVEC;
        for (int64_t o = 0; o < out[j]; o += kChunk) {
          const int64_t width = out[j] - o < kChunk ? out[j] - o : kChunk;
          for (int64_t i = 0; i < n; ++i)
            expand(h.data() + ((begin + i) * num_parts + j) * rank, bs + o, out[j], r,
                   y + token_index[begin + i] * y_stride + y_offset[j] + o, width, acc.data(),
                   i == 0 ? ahead : 0);
        }
      }
    }
  }
}

}  // namespace

extern "C" {

// dtype codes: 0 = float32, 1 = bfloat16. x and y share one dtype, A and B another.
int lmaas_lora_bgmv(int act_dtype, int weight_dtype, const void* x, int64_t x_stride,
                    int64_t in_features, const void* a, int64_t rank, int64_t num_parts,
                    const void* const* b, const int64_t* out, void* y, int64_t y_stride,
                    const int64_t* y_offset, const int64_t* slot_rank, const int64_t* group_slot,
                    const int64_t* group_start, const int64_t* token_index, int64_t num_groups,
                    int num_threads) {
#define LMAAS_RUN(X, W)                                                                        \
  run<X, W>(static_cast<const X*>(x), x_stride, in_features, static_cast<const W*>(a), rank, \
            num_parts, reinterpret_cast<const W* const*>(b), out, static_cast<X*>(y),         \
            y_stride, y_offset, slot_rank, group_slot, group_start, token_index, num_groups, \
            num_threads)
  if (act_dtype == 0 && weight_dtype == 0) LMAAS_RUN(float, float);
  else if (act_dtype == 1 && weight_dtype == 1) LMAAS_RUN(bf16, bf16);
  else if (act_dtype == 1 && weight_dtype == 0) LMAAS_RUN(bf16, float);
  else if (act_dtype == 0 && weight_dtype == 1) LMAAS_RUN(float, bf16);
  else return 1;
#undef LMAAS_RUN
  return 0;
}
}
