/* fake_api.h - what the fake libcuda.so.1 exposes to the tests besides the driver API.
 * Reached with dlsym on the fake's handle (names not starting with "cu" pass the shim untouched). */
#ifndef FAKE_API_H
#define FAKE_API_H

#include "vai_cuda.h"

typedef int (*fakecuda_calls_fn)(const char *name);        /* times the driver entry ran */
typedef unsigned (*fakecuda_ctx_sms_fn)(CUcontext c);       /* SMs of a context, 0 if unknown */
typedef int (*fakecuda_ctx_kind_fn)(CUcontext c);           /* 0 unknown, 1 primary, 2 created, 3 green */
typedef int (*fakecuda_int_fn)(void);                       /* mps pct seen at cuInit (-1 none) */
typedef unsigned (*fakecuda_uint_fn)(void);                 /* last SM affinity asked */
typedef void *(*fakecuda_own_fn)(const char *name);         /* the fake's own exported entry */
typedef CUcontext (*fakecuda_primary_fn)(int dev);          /* the fake's real primary context */

enum { FAKE_CTX_UNKNOWN = 0, FAKE_CTX_PRIMARY = 1, FAKE_CTX_CREATED = 2, FAKE_CTX_GREEN = 3 };

#endif
