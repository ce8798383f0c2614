// coop_census.cu - in one short process: the SM count this process is told
// (cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)), the SMs its kernels really run on
// (distinct %smid of a wide kernel), and whether a cooperative kernel whose grid is sized from
// the told count x the occupancy per SM launches and completes (as shared/probes/blas-mps/coop.cu).
// Built twice: with the static CUDA runtime (nvcc's default) and with the shared one.
// Prints one JSON line.
#include <cooperative_groups.h>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
namespace cg = cooperative_groups;

__global__ void coop(int *x) {
  cg::grid_group g = cg::this_grid();
  atomicAdd(x, 1);
  g.sync();
  if (g.thread_rank() == 0) x[1] = x[0];
}

__global__ void census(unsigned *flags, int iters) {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  if (threadIdx.x == 0 && id < 1024) flags[id] = 1;
  float a = 1.f;
  for (int i = 0; i < iters; i++) a = a * 1.0000001f + 1e-7f;
  if (a == 0.f) flags[0] = 2;
}

int main() {
  int told = 0, per = 0;
  cudaError_t ea = cudaDeviceGetAttribute(&told, cudaDevAttrMultiProcessorCount, 0);
  if (ea != cudaSuccess) {
    printf("{\"pid\":%d,\"error\":\"%s\"}\n", (int)getpid(), cudaGetErrorName(ea));
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  // census: 8192 blocks that each spin a while, so every SM the process may use gets work
  unsigned *flags, h[1024];
  cudaMalloc(&flags, sizeof h);
  cudaMemset(flags, 0, sizeof h);
  census<<<8192, 128>>>(flags, 20000);
  cudaError_t ec = cudaDeviceSynchronize();
  cudaMemcpy(h, flags, sizeof h, cudaMemcpyDeviceToHost);
  int seen = 0;
  for (int i = 0; i < 1024; i++) seen += h[i] ? 1 : 0;
  // cooperative launch sized from the told count
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, coop, 256, 0);
  int *x;
  cudaMalloc(&x, 8);
  cudaMemset(x, 0, 8);
  dim3 grid(told * per), block(256);
  void *args[] = {&x};
  cudaError_t el = cudaLaunchCooperativeKernel((void *)coop, grid, block, args, 0, 0);
  cudaError_t es = cudaDeviceSynchronize();
  int hx[2] = {0, 0};
  cudaMemcpy(hx, x, 8, cudaMemcpyDeviceToHost);
  printf("{\"pid\":%d,\"told\":%d,\"props_sms\":%d,\"census\":%d,\"census_err\":\"%s\",\"per_sm\":%d,"
         "\"coop_launch\":\"%s\",\"coop_sync\":\"%s\",\"coop_count\":%d,\"coop_expect\":%d}\n",
         (int)getpid(), told, prop.multiProcessorCount, seen, cudaGetErrorName(ec), per,
         cudaGetErrorName(el), cudaGetErrorName(es), hx[1], told * per * 256);
  return 0;
}
