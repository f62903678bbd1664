/* The hooks' hot path in C, each part with a Python twin that is its reference and fallback:
 *
 * - AroundWrapper: the wrapper of an AroundHandler hook, handler_calls.around_handler's closure
 *   step for step (tests/unit/test_hotpath.py runs both);
 * - stamp(): (time.time_ns(), this thread's OS id) in one call, the id read once per thread
 *   (native_thread.stamp).
 *
 * Why C: a hook runs about once per engine step, after vLLM's own work has pushed our code and
 * data out of the CPU caches, and there each further Python frame and object costs about a
 * microsecond (docs/benchmarks.md, issue 17). Here the wrapper's state is one small struct, the
 * original gets the caller's arguments as they are (vectorcall), and only the handler's two
 * halves run as Python.
 *
 * Built when a C compiler is at hand (setup.py marks it optional); without it, or with
 * OTEL_VLLM_PURE_PYTHON_HOOKS=1, the Python twins are used. Python >= 3.9.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <pthread.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *obj) { Py_INCREF(obj); return obj; }
#endif

#ifndef CLOCK_THREAD_CPUTIME_ID
#error "the self meter's clock (CLOCK_THREAD_CPUTIME_ID) is needed"
#endif

typedef struct {
    PyObject_HEAD
    PyObject *hook;       /* hook.Hook: .active, .failed(), .failures, .symbol */
    PyObject *func;       /* the original */
    PyObject *before;     /* before(this, args, kwargs) -> state or None; None: no before
                           * half (the state is True) */
    PyObject *after;      /* after(state, this, args, kwargs, result, error) */
    PyObject *only_first; /* a frozenset of strings, or NULL */
    PyObject *meter;      /* selfmeter.meter: .on, .add_hot(ns, symbol) */
    PyObject *dict;       /* __name__, __wrapped__, the hook marker (wrapping._copy_identity) */
    PyObject *weakrefs;   /* as a function has */
    Py_ssize_t active_at; /* where hook.active and meter.on live (__slots__), or -1 */
    Py_ssize_t on_at;
    Py_ssize_t failures_at;
    int bound;            /* a method or classmethod: args[0] is ``this`` */
    int after_errors;
    int wraps_result;
    vectorcallfunc vectorcall;
} AroundWrapper;

/* -- stamp() ---------------------------------------------------------------------------- */

static __thread unsigned long thread_native_id;  /* 0: not read yet in this thread */

static void
forget_thread_id(void)  /* a forked child's thread is a new OS thread */
{
    thread_native_id = 0;
}

static PyObject *
stamp(PyObject *module, PyObject *unused)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (thread_native_id == 0)
        thread_native_id = PyThread_get_thread_native_id();
    PyObject *now = PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (now == NULL)
        return NULL;
    PyObject *tid = PyLong_FromUnsignedLong(thread_native_id);
    if (tid == NULL) {
        Py_DECREF(now);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(now);
        Py_DECREF(tid);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, now);
    PyTuple_SET_ITEM(pair, 1, tid);
    return pair;
}

static PyMethodDef hotpath_functions[] = {
    {"stamp", stamp, METH_NOARGS,
     "stamp()\n--\n\n(time.time_ns(), the calling thread's OS id), the id read once per thread."},
    {NULL},
};

/* -- AroundWrapper ------------------------------------------------------------------------ */

static PyObject *s_active, *s_on, *s_failed, *s_failures, *s_add_hot, *s_symbol, *zero;

static long long
thread_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Where a __slots__ attribute of ``obj``'s class lives in the object, or -1 (read it by name).
 * Reading the slot itself is what the interpreter's specialised attribute read does; a lookup
 * by name also touches the type's attribute cache and the descriptor, each a cache miss where
 * this runs (see the top). */
static Py_ssize_t
slot_offset(PyObject *obj, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)Py_TYPE(obj), name);
    Py_ssize_t offset = -1;
    if (descr == NULL)
        PyErr_Clear();
    else {
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
                offset = member->offset;
        }
        Py_DECREF(descr);
    }
    return offset;
}

/* 1 true, 0 false, -1 error */
static int
attr_true(PyObject *obj, Py_ssize_t offset, PyObject *name)
{
    if (offset >= 0) {
        PyObject *slot = *(PyObject **)((char *)obj + offset);
        if (slot == Py_True)
            return 1;
        if (slot == Py_False)
            return 0;
        if (slot != NULL) {
            Py_INCREF(slot);  /* __bool__ may run code that replaces it */
            int truth = PyObject_IsTrue(slot);
            Py_DECREF(slot);
            return truth;
        }
    }
    PyObject *value = PyObject_GetAttr(obj, name);  /* also raises for an unset slot */
    if (value == NULL)
        return -1;
    int truth = value == Py_True ? 1 : value == Py_False ? 0 : PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

static int
add_hot(AroundWrapper *self, long long elapsed)
{
    PyObject *symbol = PyObject_GetAttr(self->hook, s_symbol);
    if (symbol == NULL)
        return -1;
    PyObject *ns = PyLong_FromLongLong(elapsed);
    if (ns == NULL) {
        Py_DECREF(symbol);
        return -1;
    }
    PyObject *result = PyObject_CallMethodObjArgs(self->meter, s_add_hot, ns, symbol, NULL);
    Py_DECREF(ns);
    Py_DECREF(symbol);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Take the current exception as the object an ``except`` clause would see (its traceback
 * attached); PyErr_Restore(*type, *value, *tb) raises it again. */
static void
fetch_exception(PyObject **type, PyObject **value, PyObject **tb)
{
    PyErr_Fetch(type, value, tb);
    PyErr_NormalizeException(type, value, tb);
    if (*tb != NULL)
        PyException_SetTraceback(*value, *tb);
}

/* The current exception is an Exception (not only a BaseException): hook.failed(exc), which
 * clears it. 0 when handled, -1 when it is not ours to handle or failed() raised. */
static int
handler_failed(AroundWrapper *self)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *tb;
    fetch_exception(&type, &value, &tb);
    PyObject *result = PyObject_CallMethodObjArgs(self->hook, s_failed, value, NULL);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static PyObject *
kwargs_dict(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *kwargs = PyDict_New();
    if (kwargs == NULL || kwnames == NULL)
        return kwargs;
    Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
            Py_DECREF(kwargs);
            return NULL;
        }
    }
    return kwargs;
}

static PyObject *
around_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    AroundWrapper *self = (AroundWrapper *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t first = self->bound ? 1 : 0;

    if (self->only_first != NULL && nargs > first && PyUnicode_CheckExact(args[first])) {
        int member = PySet_Contains(self->only_first, args[first]);
        if (member < 0)
            return NULL;
        if (!member)  /* a value the handler records nothing for */
            return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }
    int active = attr_true(self->hook, self->active_at, s_active);
    if (active < 0)
        return NULL;
    if (!active)
        return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    int metered = attr_true(self->meter, self->on_at, s_on);
    if (metered < 0)
        return NULL;
    long long entered = metered ? thread_ns() : 0, called = 0, returned_at = 0;

    PyObject *this = Py_None;
    Py_ssize_t skip = 0;
    if (self->bound && nargs) {
        this = args[0];
        skip = 1;
    }
    PyObject *rest = PyTuple_New(nargs - skip);
    if (rest == NULL)
        return NULL;
    for (Py_ssize_t i = skip; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(rest, i - skip, args[i]);
    }
    PyObject *kwargs = kwargs_dict(args, nargs, kwnames);
    if (kwargs == NULL) {
        Py_DECREF(rest);
        return NULL;
    }
    PyObject *result = NULL, *returned = NULL;
    PyObject *before_args[3] = {this, rest, kwargs};
    PyObject *state = self->before == Py_None
        ? Py_NewRef(Py_True) : PyObject_Vectorcall(self->before, before_args, 3, NULL);
    if (state == NULL) {
        if (handler_failed(self) < 0)
            goto done;
        state = Py_NewRef(Py_None);
    }
    if (state == Py_None) {
        if (metered && add_hot(self, thread_ns() - entered) < 0)
            goto done;
        result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
        goto done;
    }
    if (metered)
        called = thread_ns();
    result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    if (metered)
        returned_at = thread_ns();
    if (result == NULL) {  /* the original raised: its exception goes on as it is */
        PyObject *type, *value, *tb;
        fetch_exception(&type, &value, &tb);
        int ok = 0;
        if (self->after_errors) {
            PyObject *after_args[6] = {state, this, rest, kwargs, Py_None, value};
            PyObject *out = PyObject_Vectorcall(self->after, after_args, 6, NULL);
            if (out != NULL) {
                Py_DECREF(out);
                ok = PyObject_SetAttr(self->hook, s_failures, zero) < 0 ? -1 : 0;
            }
            else
                ok = handler_failed(self);
        }
        if (ok == 0 && metered)
            ok = add_hot(self, called - entered + thread_ns() - returned_at);
        if (ok == 0)
            PyErr_Restore(type, value, tb);
        else {  /* as in Python: an exception of our bookkeeping replaces the original's */
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        goto done;
    }
    PyObject *after_args[6] = {state, this, rest, kwargs, result, Py_None};
    returned = PyObject_Vectorcall(self->after, after_args, 6, NULL);
    if (returned == NULL) {
        if (handler_failed(self) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
    else {
        int failing = attr_true(self->hook, self->failures_at, s_failures);
        if (failing < 0 || (failing && PyObject_SetAttr(self->hook, s_failures, zero) < 0)) {
            Py_CLEAR(result);
            goto done;
        }
    }
    if (metered && add_hot(self, called - entered + thread_ns() - returned_at) < 0) {
        Py_CLEAR(result);
        goto done;
    }
    if (self->wraps_result && returned != NULL) {
        Py_SETREF(result, returned);
        returned = NULL;
    }
done:
    Py_XDECREF(returned);
    Py_XDECREF(state);
    Py_DECREF(rest);
    Py_DECREF(kwargs);
    return result;
}

static int
around_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"hook", "func", "before", "after", "meter", "bound",
                            "after_errors", "wraps_result", "only_first", NULL};
    AroundWrapper *self = (AroundWrapper *)op;
    PyObject *hook, *func, *before, *after, *meter, *only_first = Py_None;
    int bound, after_errors, wraps_result;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOppp|O", names, &hook, &func, &before,
                                     &after, &meter, &bound, &after_errors, &wraps_result,
                                     &only_first))
        return -1;
    if (only_first != Py_None && !PyFrozenSet_Check(only_first)) {
        PyErr_SetString(PyExc_TypeError, "only_first must be a frozenset or None");
        return -1;
    }
    Py_XSETREF(self->hook, Py_NewRef(hook));
    Py_XSETREF(self->func, Py_NewRef(func));
    Py_XSETREF(self->before, Py_NewRef(before));
    Py_XSETREF(self->after, Py_NewRef(after));
    Py_XSETREF(self->meter, Py_NewRef(meter));
    Py_XSETREF(self->only_first, only_first == Py_None ? NULL : Py_NewRef(only_first));
    self->active_at = slot_offset(hook, s_active);
    self->on_at = slot_offset(meter, s_on);
    self->failures_at = slot_offset(hook, s_failures);
    self->bound = bound;
    self->after_errors = after_errors;
    self->wraps_result = wraps_result;
    self->vectorcall = around_call;
    return 0;
}

/* Bound like a function: ``instance.method`` is a bound method of the wrapper. */
static PyObject *
around_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static int
around_traverse(PyObject *op, visitproc visit, void *arg)
{
    AroundWrapper *self = (AroundWrapper *)op;
    Py_VISIT(self->hook);
    Py_VISIT(self->func);
    Py_VISIT(self->before);
    Py_VISIT(self->after);
    Py_VISIT(self->only_first);
    Py_VISIT(self->meter);
    Py_VISIT(self->dict);
    return 0;
}

static int
around_clear(PyObject *op)
{
    AroundWrapper *self = (AroundWrapper *)op;
    Py_CLEAR(self->hook);
    Py_CLEAR(self->func);
    Py_CLEAR(self->before);
    Py_CLEAR(self->after);
    Py_CLEAR(self->only_first);
    Py_CLEAR(self->meter);
    Py_CLEAR(self->dict);
    return 0;
}

static void
around_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    if (((AroundWrapper *)op)->weakrefs != NULL)
        PyObject_ClearWeakRefs(op);
    around_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyGetSetDef around_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

static PyTypeObject AroundWrapperType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_vllm_ascend._hotpath.AroundWrapper",
    .tp_doc = "The wrapper of an AroundHandler hook (handler_calls.around_handler in C).",
    .tp_basicsize = sizeof(AroundWrapper),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_vectorcall_offset = offsetof(AroundWrapper, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dictoffset = offsetof(AroundWrapper, dict),
    .tp_weaklistoffset = offsetof(AroundWrapper, weakrefs),
    .tp_getset = around_getset,
    .tp_descr_get = around_get,
    .tp_init = around_init,
    .tp_new = PyType_GenericNew,
    .tp_traverse = around_traverse,
    .tp_clear = around_clear,
    .tp_dealloc = around_dealloc,
    .tp_free = PyObject_GC_Del,
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "_hotpath", "The hooks' hot path in C (see _hotpath.c).", -1,
    hotpath_functions,
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    if (pthread_atfork(NULL, NULL, forget_thread_id) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    if ((s_active = PyUnicode_InternFromString("active")) == NULL
        || (s_on = PyUnicode_InternFromString("on")) == NULL
        || (s_failed = PyUnicode_InternFromString("failed")) == NULL
        || (s_failures = PyUnicode_InternFromString("failures")) == NULL
        || (s_add_hot = PyUnicode_InternFromString("add_hot")) == NULL
        || (s_symbol = PyUnicode_InternFromString("symbol")) == NULL
        || (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (PyType_Ready(&AroundWrapperType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&AroundWrapperType);
    if (PyModule_AddObject(module, "AroundWrapper", (PyObject *)&AroundWrapperType) < 0) {
        Py_DECREF(&AroundWrapperType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
