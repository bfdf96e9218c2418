/* A CPython capsule destructor for DLPack exports, for Python bindings that have no compiled
 * extension of their own (ctypes, cffi's ABI mode): a destructor written in Python cannot
 * save and restore an exception pending while the capsule dies, as the DLPack Python
 * specification requires. The few Python C API functions it needs are looked up in the
 * running process (dlsym): libtheus neither links nor includes Python. */
#include "theus/theus_dlpack.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

typedef int (*capsule_is_valid_fn)(void *capsule, const char *name);
typedef void *(*capsule_get_pointer_fn)(void *capsule, const char *name);
typedef void (*err_fetch_fn)(void **type, void **value, void **traceback);
typedef void (*err_restore_fn)(void *type, void *value, void *traceback);

static struct {
    capsule_is_valid_fn is_valid;
    capsule_get_pointer_fn get_pointer;
    err_fetch_fn fetch;
    err_restore_fn restore;
} py;

static pthread_once_t py_once = PTHREAD_ONCE_INIT;

/* Function pointers from dlsym's void *: through a union, as C11 has no direct conversion. */
static void *lookup(const char *name)
{
    return dlsym(RTLD_DEFAULT, name);
}

static void resolve(void)
{
    union { void *p; capsule_is_valid_fn f; } a = {lookup("PyCapsule_IsValid")};
    union { void *p; capsule_get_pointer_fn f; } b = {lookup("PyCapsule_GetPointer")};
    union { void *p; err_fetch_fn f; } c = {lookup("PyErr_Fetch")};
    union { void *p; err_restore_fn f; } d = {lookup("PyErr_Restore")};
    if (a.p && b.p && c.p && d.p) {
        py.get_pointer = b.f;
        py.fetch = c.f;
        py.restore = d.f;
        py.is_valid = a.f;
    }
}

void theus_dlpack_capsule_destructor(void *capsule)
{
    pthread_once(&py_once, resolve);
    if (!py.is_valid || !capsule)
        return; /* no Python in this process: nothing can have made the capsule */
    /* A consumer renamed it ("used_dltensor_versioned", "used_dltensor") and owns the
     * tensor now; IsValid never sets an exception. */
    const int versioned = py.is_valid(capsule, "dltensor_versioned");
    if (!versioned && !py.is_valid(capsule, "dltensor"))
        return;
    void *type, *value, *traceback;
    py.fetch(&type, &value, &traceback);
    void *t = py.get_pointer(capsule, versioned ? "dltensor_versioned" : "dltensor");
    if (t && versioned) {
        DLManagedTensorVersioned *m = t;
        if (m->deleter)
            m->deleter(m);
    } else if (t) {
        DLManagedTensor *m = t;
        if (m->deleter)
            m->deleter(m);
    }
    py.restore(type, value, traceback);
}
