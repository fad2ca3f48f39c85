/*
 * A tiny TensorFlow Lite external delegate used by edgeloop's tests.
 *
 * It implements the external delegate plugin ABI that
 * `load_delegate(library, options)` (ai_edge_litert, tflite_runtime, tensorflow.lite) calls:
 *
 *   TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
 *                                                 void (*report_error)(const char*));
 *   void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);
 *
 * Behaviour:
 *   - appends every option it receives as "key=value" lines (then "--") to the file named by the
 *     option "record_to" or, failing that, the environment variable STUB_DELEGATE_RECORD;
 *   - option "fail"="1" (or env STUB_DELEGATE_FAIL=1): report an error and return NULL;
 *   - Prepare claims no node by default. Option "claim" (or env STUB_DELEGATE_CLAIM) names a
 *     custom operator (e.g. "edgetpu-custom-op"): nodes running that custom op are replaced by
 *     one do-nothing delegate kernel, the way libedgetpu takes its compiled subgraphs.
 *
 * No TensorFlow header is needed: the structs below declare only the leading, ABI-stable
 * fields of tensorflow/lite/core/c/common.h ("New values should be added only to the end of
 * structs and never reordered"). Objects handed to the runtime are over-allocated and zeroed,
 * so fields a newer runtime appends read as NULL/0 (their documented defaults).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

typedef struct {
  int size;
  int data[];
} TfLiteIntArray;

struct TfLiteContext;
struct TfLiteDelegate;
typedef struct TfLiteNode TfLiteNode; /* opaque here */

/* TfLiteRegistration: leading fields (identical in TF 2.14 and LiteRT 2.x), then zero padding
 * large enough for fields appended by later versions (registration_external, async_kernel,
 * inplace_operator, ...). It is passed BY VALUE to ReplaceNodeSubsetsWithDelegateKernels, so
 * it must be at least as large as the runtime's own struct. */
typedef struct TfLiteRegistration {
  void* (*init)(struct TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(struct TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(struct TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(struct TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const struct TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* reserved_for_newer_fields[24];
} TfLiteRegistration;

/* TfLiteContext: only the leading fields this stub calls. */
typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context, TfLiteIntArray** plan);
  void* tensors;
  void* impl_;
  void* ResizeTensor;
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  void* AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index,
                                         TfLiteNode** node, TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext*,
                                                        TfLiteRegistration registration,
                                                        const TfLiteIntArray* nodes_to_replace,
                                                        struct TfLiteDelegate* delegate);
} TfLiteContext;

/* TfLiteDelegate: the same seven fields in TF 2.14 and LiteRT 2.3.0. */
typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* opaque_delegate_builder;
} TfLiteDelegate;

#define kTfLiteBuiltinCustom 32

typedef struct {
  char claim[128]; /* custom op name to take, "" = none */
} StubData;

static void* kernel_init(TfLiteContext* c, const char* b, size_t n) {
  (void)c; (void)b; (void)n;
  return NULL;
}
static void kernel_free(TfLiteContext* c, void* b) { (void)c; (void)b; }
static TfLiteStatus kernel_prepare(TfLiteContext* c, TfLiteNode* n) {
  (void)c; (void)n;
  return kTfLiteOk;
}
/* Leaves the outputs as allocated (zeros): this stub proves plumbing, not arithmetic. */
static TfLiteStatus kernel_invoke(TfLiteContext* c, TfLiteNode* n) {
  (void)c; (void)n;
  return kTfLiteOk;
}

static TfLiteStatus stub_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  StubData* data = (StubData*)delegate->data_;
  if (data == NULL || data->claim[0] == '\0') return kTfLiteOk; /* claims none */

  TfLiteIntArray* plan = NULL;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk || plan == NULL) return kTfLiteError;
  TfLiteIntArray* take = calloc(1, sizeof(TfLiteIntArray) + sizeof(int) * (size_t)(plan->size + 1));
  if (take == NULL) return kTfLiteError;
  for (int i = 0; i < plan->size; ++i) {
    TfLiteNode* node = NULL;
    TfLiteRegistration* reg = NULL;
    if (context->GetNodeAndRegistration(context, plan->data[i], &node, &reg) != kTfLiteOk) continue;
    if (reg != NULL && reg->builtin_code == kTfLiteBuiltinCustom && reg->custom_name != NULL &&
        strcmp(reg->custom_name, data->claim) == 0) {
      take->data[take->size++] = plan->data[i];
    }
  }
  TfLiteStatus status = kTfLiteOk;
  if (take->size > 0) {
    TfLiteRegistration kernel;
    memset(&kernel, 0, sizeof(kernel));
    kernel.init = kernel_init;
    kernel.free = kernel_free;
    kernel.prepare = kernel_prepare;
    kernel.invoke = kernel_invoke;
    kernel.custom_name = "edgeloop-stub-delegate";
    kernel.version = 1;
    status = context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, take, delegate);
  }
  free(take);
  return status;
}

static void record(const char* path, char** keys, char** values, size_t n) {
  if (path == NULL || path[0] == '\0') return;
  FILE* f = fopen(path, "a");
  if (f == NULL) return;
  for (size_t i = 0; i < n; ++i) fprintf(f, "%s=%s\n", keys[i], values[i]);
  fprintf(f, "--\n");
  fclose(f);
}

TfLiteDelegate* tflite_plugin_create_delegate(char** options_keys, char** options_values,
                                              size_t num_options,
                                              void (*report_error)(const char*)) {
  const char* record_to = getenv("STUB_DELEGATE_RECORD");
  const char* claim = getenv("STUB_DELEGATE_CLAIM");
  const char* fail_env = getenv("STUB_DELEGATE_FAIL");
  int fail = fail_env != NULL && strcmp(fail_env, "1") == 0;
  for (size_t i = 0; i < num_options; ++i) {
    if (strcmp(options_keys[i], "record_to") == 0) record_to = options_values[i];
    if (strcmp(options_keys[i], "claim") == 0) claim = options_values[i];
    if (strcmp(options_keys[i], "fail") == 0) fail = strcmp(options_values[i], "1") == 0;
  }
  record(record_to, options_keys, options_values, num_options);
  /* Like libedgetpu, say something on stderr while loading. */
  fprintf(stderr, "stub_delegate: create with %zu option(s)\n", num_options);
  fflush(stderr);
  if (fail) {
    if (report_error != NULL) report_error("stub_delegate: told to fail (fail=1)");
    return NULL;
  }
  /* Over-allocate: a newer runtime may read fields appended after opaque_delegate_builder. */
  TfLiteDelegate* delegate = calloc(1, sizeof(TfLiteDelegate) + 16 * sizeof(void*));
  StubData* data = calloc(1, sizeof(StubData));
  if (delegate == NULL || data == NULL) {
    free(delegate);
    free(data);
    if (report_error != NULL) report_error("stub_delegate: out of memory");
    return NULL;
  }
  if (claim != NULL) snprintf(data->claim, sizeof(data->claim), "%s", claim);
  delegate->data_ = data;
  delegate->Prepare = stub_prepare;
  /* kTfLiteDelegateFlagsAllowDynamicTensors (1) when claiming: otherwise the runtime prepares
   * every node before calling Prepare and fails on the (still unresolved) custom op. */
  delegate->flags = data->claim[0] != 0 ? 1 : 0;
  return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (delegate == NULL) return;
  free(delegate->data_);
  free(delegate);
}
