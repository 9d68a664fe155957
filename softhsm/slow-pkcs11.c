/*
 * slow-pkcs11: a PKCS#11 module that stands in front of another one (SoftHSM2 by default) and
 * makes it a slow HSM: every call is forwarded unchanged, except that C_Sign waits a fixed
 * delay before a signature is made, one signature at a time across the process (a device
 * that signs serially, as a YubiHSM 2 does). For the slow-HSM tests and benchmarks only
 * (tests/it/revocation.rs, scripts/bench-ocsp.sh); never for production.
 *
 * Build:  gcc -shared -fPIC -O2 -o slow-pkcs11.so softhsm/slow-pkcs11.c -ldl -lpthread
 *         (-DSLOW_PKCS11_DELAY_MS=N and -DSLOW_PKCS11_TARGET='"/path/module.so"' change the
 *         defaults: 20 ms, /usr/lib/softhsm/libsofthsm2.so)
 * At run time SLOW_PKCS11_DELAY_MS and SLOW_PKCS11_TARGET override the built-in values.
 *
 * Self-contained: the few PKCS#11 v2.40 types it needs are declared here (the function list is
 * a version and 68 function pointers; C_Sign is the 44th), so no PKCS#11 header is needed.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef SLOW_PKCS11_DELAY_MS
#define SLOW_PKCS11_DELAY_MS 20
#endif
#ifndef SLOW_PKCS11_TARGET
#define SLOW_PKCS11_TARGET "/usr/lib/softhsm/libsofthsm2.so"
#endif

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct {
    unsigned char major;
    unsigned char minor;
} CK_VERSION;

#define FUNCTIONS 68     /* CK_FUNCTION_LIST of PKCS#11 v2.40 */
#define C_GET_FUNCTION_LIST_INDEX 3  /* C_Initialize is 0 */
#define C_SIGN_INDEX 43
#define CKR_GENERAL_ERROR 5UL
#define CKR_ARGUMENTS_BAD 7UL

typedef struct {
    CK_VERSION version;
    void *functions[FUNCTIONS];
} function_list;

typedef CK_RV (*get_function_list_fn)(function_list **);
typedef CK_RV (*sign_fn)(CK_ULONG session, unsigned char *data, CK_ULONG data_len,
                         unsigned char *signature, CK_ULONG *signature_len);

static function_list slow;
static sign_fn target_sign;
static CK_RV load_result = CKR_GENERAL_ERROR;
static long delay_ms = SLOW_PKCS11_DELAY_MS;
static pthread_once_t loaded = PTHREAD_ONCE_INIT;
static pthread_mutex_t device = PTHREAD_MUTEX_INITIALIZER;

static CK_RV slow_sign(CK_ULONG session, unsigned char *data, CK_ULONG data_len,
                       unsigned char *signature, CK_ULONG *signature_len)
{
    if (signature == NULL) {
        /* Asking for the length signs nothing. */
        return target_sign(session, data, data_len, signature, signature_len);
    }
    pthread_mutex_lock(&device);
    struct timespec wait = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    while (nanosleep(&wait, &wait) != 0) {
    }
    CK_RV rv = target_sign(session, data, data_len, signature, signature_len);
    pthread_mutex_unlock(&device);
    return rv;
}

CK_RV C_GetFunctionList(function_list **list);

static void load(void)
{
    const char *path = getenv("SLOW_PKCS11_TARGET");
    const char *delay = getenv("SLOW_PKCS11_DELAY_MS");
    if (path == NULL || *path == '\0') {
        path = SLOW_PKCS11_TARGET;
    }
    if (delay != NULL && *delay != '\0') {
        delay_ms = strtol(delay, NULL, 10);
    }
    void *module = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
        return;
    }
    get_function_list_fn get = (get_function_list_fn)dlsym(module, "C_GetFunctionList");
    function_list *target = NULL;
    if (get == NULL || get(&target) != 0 || target == NULL) {
        return;
    }
    memcpy(&slow, target, sizeof slow);
    target_sign = (sign_fn)target->functions[C_SIGN_INDEX];
    slow.functions[C_SIGN_INDEX] = (void *)slow_sign;
    slow.functions[C_GET_FUNCTION_LIST_INDEX] = (void *)C_GetFunctionList;
    load_result = 0;
}

CK_RV C_GetFunctionList(function_list **list)
{
    if (list == NULL) {
        return CKR_ARGUMENTS_BAD;
    }
    pthread_once(&loaded, load);
    if (load_result != 0) {
        return load_result;
    }
    *list = &slow;
    return 0;
}
