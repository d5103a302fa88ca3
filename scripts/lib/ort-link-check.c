/* Linked by scripts/build-onnxruntime.sh against the merged libonnxruntime.a and run: a missing
 * archive shows up here as a list of undefined symbols, not later inside `cargo build`.
 * No ONNX Runtime header is needed: OrtApiBase and the first OrtApi entries are append-only ABI
 * (onnxruntime_c_api.h: CreateStatus, GetErrorCode, GetErrorMessage, CreateEnv, ...). */
#include <stdint.h>
#include <stdio.h>

#ifndef AKIDB_ORT_API_VERSION
#error "build with -DAKIDB_ORT_API_VERSION=<minor version of the pinned ONNX Runtime>"
#endif

typedef void (*ort_fn)(void);
typedef struct {
  const ort_fn *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;
typedef void *(*create_env_fn)(int severity, const char *logid, void **out);
typedef const char *(*error_message_fn)(const void *status);

const OrtApiBase *OrtGetApiBase(void);

int main(void) {
  const OrtApiBase *base = OrtGetApiBase();
  if (base == NULL) {
    fprintf(stderr, "OrtGetApiBase() returned NULL\n");
    return 2;
  }
  const ort_fn *api = base->GetApi(AKIDB_ORT_API_VERSION);
  if (api == NULL) {
    fprintf(stderr, "ONNX Runtime %s does not provide API version %d\n", base->GetVersionString(),
            AKIDB_ORT_API_VERSION);
    return 3;
  }
  void *env = NULL;
  void *status = ((create_env_fn)api[3])(2 /* ORT_LOGGING_LEVEL_WARNING */, "akidb-link-check", &env);
  if (status != NULL || env == NULL) {
    fprintf(stderr, "CreateEnv failed: %s\n", status ? ((error_message_fn)api[2])(status) : "no environment");
    return 4;
  }
  printf("%s\n", base->GetVersionString());
  return 0;
}
