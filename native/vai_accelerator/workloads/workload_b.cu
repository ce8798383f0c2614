// workload_b.cu - memory bandwidth: a float4 stream copy between two 1 GiB buffers, timed for
// VAI_WL_SECONDS (default 3). Reports GB/s counting bytes read plus bytes written.
#include "common.h"

__global__ void copy4(const float4* __restrict__ in, float4* __restrict__ out, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = in[i];
}

int main() {
  const char* ctx = setup_context();
  double seconds = env_d("VAI_WL_SECONDS", 3);
  const size_t bytes = 1ULL << 30, n = bytes / sizeof(float4);
  float4 *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  int sms_attr = attr_sms(), sms_seen = count_sms(false);
  const int blocks = 132 * 16, threads = 512;
  for (int i = 0; i < 3; i++) copy4<<<blocks, threads>>>(a, b, n);
  CK(cudaDeviceSynchronize());
  barrier();
  double t0 = now_s(), t = t0;
  long copies = 0;
  while (t - t0 < seconds) {
    for (int i = 0; i < 4; i++) copy4<<<blocks, threads>>>(i % 2 ? b : a, i % 2 ? a : b, n);
    copies += 4;
    CK(cudaDeviceSynchronize());
    t = now_s();
  }
  CK(cudaGetLastError());
  double dt = t - t0;
  printf("{\"workload\":\"b\",\"pid\":%d,\"limit_pct\":\"%s\",\"ctx\":\"%s\",\"sms_attr\":%d,"
         "\"sms_seen\":%d,\"gbps\":%.1f,\"seconds\":%.2f,\"copies\":%ld,\"t_start\":%.3f,"
         "\"t_end\":%.3f}\n",
         (int)getpid(), env_s("BLESS_LIMIT_PCT"), ctx, sms_attr, sms_seen,
         2.0 * bytes * copies / dt / 1e9, dt, copies, t0, t);
  return 0;
}
