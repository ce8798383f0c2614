// workload_a.cu - compute-bound: a long FP32 FMA loop over a grid of many small waves, timed for
// VAI_WL_SECONDS (default 3) after a warm-up and an optional barrier. Prints one JSON line.
#include "common.h"

__global__ void fma_burn(float* out, int iters) {
  float a0 = threadIdx.x * 1e-3f, a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3;
  float a4 = a0 + 4, a5 = a0 + 5, a6 = a0 + 6, a7 = a0 + 7;
  const float b = 0.999999f, c = 1e-6f;
  for (int i = 0; i < iters; i++) {
    a0 = fmaf(a0, b, c); a1 = fmaf(a1, b, c); a2 = fmaf(a2, b, c); a3 = fmaf(a3, b, c);
    a4 = fmaf(a4, b, c); a5 = fmaf(a5, b, c); a6 = fmaf(a6, b, c); a7 = fmaf(a7, b, c);
  }
  float s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
  if (s == 12345.f) out[0] = s;
}

int main() {
  const char* ctx = setup_context();
  double seconds = env_d("VAI_WL_SECONDS", 3);
  const int blocks = 132 * 512, threads = 256, iters = 1024;
  const double flops = 2.0 * 8 * iters * (double)blocks * threads;
  float* out;
  CK(cudaMalloc(&out, 4));
  int sms_attr = attr_sms(), sms_seen = count_sms(false), sms_graph = count_sms(true);
  for (int i = 0; i < 5; i++) fma_burn<<<blocks, threads>>>(out, iters);
  CK(cudaDeviceSynchronize());
  barrier();
  double t0 = now_s(), t = t0;
  long launches = 0;
  while (t - t0 < seconds) {
    for (int i = 0; i < 4; i++) fma_burn<<<blocks, threads>>>(out, iters);
    launches += 4;
    CK(cudaDeviceSynchronize());
    t = now_s();
  }
  CK(cudaGetLastError());
  double dt = t - t0;
  printf("{\"workload\":\"a\",\"pid\":%d,\"limit_pct\":\"%s\",\"ctx\":\"%s\",\"sms_attr\":%d,"
         "\"sms_seen\":%d,\"sms_seen_graph\":%d,\"tflops\":%.2f,\"seconds\":%.2f,\"launches\":%ld,"
         "\"t_start\":%.3f,\"t_end\":%.3f}\n",
         (int)getpid(), env_s("BLESS_LIMIT_PCT"), ctx, sms_attr, sms_seen, sms_graph,
         flops * launches / dt / 1e12, dt, launches, t0, t);
  return 0;
}
