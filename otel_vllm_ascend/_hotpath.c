/* The hooks' hot path in C, each part with a Python twin that is its reference and fallback:
 *
 * - AroundWrapper: the wrapper of an AroundHandler hook, handler_calls.around_handler's closure
 *   step for step (tests/unit/test_hotpath.py runs both);
 * - stamp(): (time.time_ns(), this thread's OS id) in one call, the id read once per thread
 *   (native_thread.stamp);
 * - PhaseBegins and PhaseContext: the model runner's phases (handlers.model's _phase_begins and
 *   _PhaseContext), a phase's begin, entry and exit without a Python frame of ours. The twin
 *   runs until it has done its once-per-process work (the role's record, the NPU check), then
 *   sets ``ready``, and from the next phase on this does the rest.
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
time_ns_object(void)  /* time.time_ns() */
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
}

static PyObject *
thread_id_object(void)
{
    if (thread_native_id == 0)
        thread_native_id = PyThread_get_thread_native_id();
    return PyLong_FromUnsignedLong(thread_native_id);
}

static PyObject *
stamp(PyObject *module, PyObject *unused)
{
    PyObject *now = time_ns_object();
    if (now == NULL)
        return NULL;
    PyObject *tid = thread_id_object();
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

/* meter.add_hot(elapsed, symbol) */
static int
meter_add(PyObject *meter, long long elapsed, PyObject *symbol)
{
    PyObject *ns = PyLong_FromLongLong(elapsed);
    if (ns == NULL)
        return -1;
    PyObject *result = PyObject_CallMethodObjArgs(meter, s_add_hot, ns, symbol, NULL);
    Py_DECREF(ns);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static int
add_hot(AroundWrapper *self, long long elapsed)
{
    PyObject *symbol = PyObject_GetAttr(self->hook, s_symbol);
    if (symbol == NULL)
        return -1;
    int ok = meter_add(self->meter, elapsed, symbol);
    Py_DECREF(symbol);
    return ok;
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

/* -- PhaseBegins and PhaseContext ---------------------------------------------------------- */

/* handlers.model's _phase_begins: the ``after`` half of the hook on the runner's
 * record_function_or_nullcontext(name). Its Python twin runs until it has recorded the
 * process's role and found no NPU to synchronise; it then sets ``ready`` and from the next
 * phase on this does the same without it. */
typedef struct {
    PyObject_HEAD
    PyObject *phases;       /* RUNNER_PHASES: the runner's tag -> the phase's span name */
    PyObject *ns;           /* handlers.model's globals: _open_step, _step_request_ids */
    PyObject *twin;         /* _phase_begins */
    PyObject *nullcontext;  /* contextlib.nullcontext: entered and exited without a call */
    PyObject *record_task;  /* recorder.record_task */
    PyObject *expander;     /* the Worker spans' expander, queued with a phase's own spans */
    PyObject *record_span;  /* record_worker_span(name, start, end, tid, request_ids, error) */
    PyObject *meter;
    PyObject *symbol;       /* the self meter's row for a phase's exit */
    Py_ssize_t on_at;
    char ready;             /* T_BOOL */
    vectorcallfunc vectorcall;
} PhaseBegins;

/* handlers.model's _PhaseContext: the runner's context manager for one phase, recording the
 * phase's span at its exit; other attributes read through to the runner's own. */
typedef struct {
    PyObject_HEAD
    PhaseBegins *begins;
    PyObject *target;       /* the runner's context manager */
    PyObject *phase;
    PyObject *request_ids;  /* the forward phase's: the step's request ids, or None */
    PyObject *start;
    PyObject *tid;
    PyObject *own;          /* NULL, or the spans ending inside a phase outside a runner call */
} PhaseContext;

static PyTypeObject PhaseContextType;
static PyObject *s_name, *s_forward, *s_open_step, *s_step_request_ids, *s_enter_result,
                *s_dunder_enter, *s_dunder_exit;

static PyObject *
phase_begins_call(PyObject *op, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    PhaseBegins *self = (PhaseBegins *)op;
    if (PyVectorcall_NARGS(nargsf) != 6 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "PhaseBegins takes (state, this, args, kwargs, result, error)");
        return NULL;
    }
    PyObject *args = argv[2], *kwargs = argv[3], *result = argv[4], *name = NULL;
    if (PyTuple_Check(args) && PyTuple_GET_SIZE(args))
        name = PyTuple_GET_ITEM(args, 0);
    else if (PyDict_Check(kwargs) && (name = PyDict_GetItemWithError(kwargs, s_name)) == NULL
             && PyErr_Occurred())
        return NULL;
    if (name == NULL || !PyUnicode_CheckExact(name))
        return Py_NewRef(result);
    PyObject *phase = PyDict_GetItemWithError(self->phases, name);
    if (phase == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(result);
    if (!self->ready)
        return PyObject_Vectorcall(self->twin, argv, 6, NULL);
    PyObject *request_ids = Py_None;  /* the forward phase's: _step_request_ids or None */
    if (phase == s_forward
        || (PyUnicode_Check(phase) && PyUnicode_Compare(phase, s_forward) == 0)) {
        PyObject *ids = PyDict_GetItemWithError(self->ns, s_step_request_ids);
        if (ids == NULL && PyErr_Occurred())
            return NULL;
        Py_XINCREF(ids);
        int truth = ids == NULL ? 0 : PyObject_IsTrue(ids);
        if (truth > 0)
            request_ids = ids;
        else
            Py_XDECREF(ids);
        if (truth < 0)
            return NULL;
    }
    if (request_ids == Py_None)
        Py_INCREF(request_ids);
    PyObject *start = time_ns_object();
    PyObject *tid = start == NULL ? NULL : thread_id_object();
    PhaseContext *context = tid == NULL ? NULL : PyObject_GC_New(PhaseContext, &PhaseContextType);
    if (context == NULL) {
        Py_XDECREF(start);
        Py_XDECREF(tid);
        Py_DECREF(request_ids);
        return NULL;
    }
    context->begins = (PhaseBegins *)Py_NewRef(op);
    context->target = Py_NewRef(result);
    context->phase = Py_NewRef(phase);
    context->request_ids = request_ids;
    context->start = start;
    context->tid = tid;
    context->own = NULL;
    PyObject_GC_Track(context);
    return (PyObject *)context;
}

static PyObject *
phase_enter(PyObject *op, PyObject *unused)
{
    PhaseContext *self = (PhaseContext *)op;
    PhaseBegins *begins = self->begins;
    PyObject *entered = (PyObject *)Py_TYPE(self->target) == begins->nullcontext
        ? PyObject_GetAttr(self->target, s_enter_result)
        : PyObject_CallMethodNoArgs(self->target, s_dunder_enter);
    if (entered == NULL)
        return NULL;
    PyObject *open = PyDict_GetItemWithError(begins->ns, s_open_step);
    if (open == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_NameError, s_open_step);
        Py_DECREF(entered);
        return NULL;
    }
    if (open == Py_None) {  /* a phase outside the runner's call: its spans go as one record */
        PyObject *own = PyList_New(0);
        if (own == NULL || PyDict_SetItem(begins->ns, s_open_step, own) < 0) {
            Py_XDECREF(own);
            Py_DECREF(entered);
            return NULL;
        }
        Py_XSETREF(self->own, own);
    }
    return entered;
}

/* The phase's span (a WorkerSpan's fields) where its Python twin puts it. */
static int
phase_record(PhaseContext *self, PyObject *exc)
{
    PhaseBegins *begins = self->begins;
    PyObject *own = self->own;
    PyObject *end = time_ns_object();
    if (end == NULL)
        return -1;
    PyObject *span = PyTuple_Pack(7, self->phase, self->start, end, self->tid,
                                  self->request_ids, Py_None, exc);
    Py_DECREF(end);
    if (span == NULL)
        return -1;
    /* borrowed, and used before anything is allocated (a collection could run code) */
    PyObject *open = PyDict_GetItemWithError(begins->ns, s_open_step);
    if (open == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_NameError, s_open_step);
        Py_DECREF(span);
        return -1;
    }
    if (own != NULL && open == own) {
        if (PyDict_SetItem(begins->ns, s_open_step, Py_None) < 0) {
            Py_DECREF(span);
            return -1;
        }
        open = Py_None;
    }
    PyObject *out;
    if (own != NULL) {
        if (PyList_Append(own, span) < 0) {
            Py_DECREF(span);
            return -1;
        }
        PyObject *task_args[2] = {begins->expander, own};
        out = PyObject_Vectorcall(begins->record_task, task_args, 2, NULL);
    }
    else if (open != Py_None && exc == Py_None && PyList_CheckExact(open)) {  /* the usual case */
        int appended = PyList_Append(open, span);
        Py_DECREF(span);
        return appended;
    }
    else {
        PyObject *span_args[6];
        for (Py_ssize_t i = 0; i < 5; i++)
            span_args[i] = PyTuple_GET_ITEM(span, i);
        span_args[5] = exc;
        out = PyObject_Vectorcall(begins->record_span, span_args, 6, NULL);
    }
    Py_DECREF(span);
    if (out == NULL)
        return -1;
    Py_DECREF(out);
    return 0;
}

static PyObject *
phase_exit(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    PhaseContext *self = (PhaseContext *)op;
    PhaseBegins *begins = self->begins;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes (exc_type, exc, tb)");
        return NULL;
    }
    PyObject *result = (PyObject *)Py_TYPE(self->target) == begins->nullcontext
        ? Py_NewRef(Py_None)
        : PyObject_CallMethodObjArgs(self->target, s_dunder_exit, args[0], args[1], args[2],
                                     NULL);
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (result == NULL)  /* the runner's exit raised: that goes on after our part */
        PyErr_Fetch(&type, &value, &tb);
    int metered = attr_true(begins->meter, begins->on_at, s_on);
    long long began = metered > 0 ? thread_ns() : 0;
    int ok = metered < 0 ? -1 : phase_record(self, args[1]);
    if (ok < 0 && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();  /* our bookkeeping must not replace the block's outcome */
        ok = 0;
    }
    if (ok == 0 && began)
        ok = meter_add(begins->meter, thread_ns() - began, begins->symbol);
    if (ok < 0) {  /* as in Python: an exception of ours in the finally block replaces */
        Py_XDECREF(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    if (result == NULL)
        PyErr_Restore(type, value, tb);
    return result;
}

static PyObject *
phase_getattro(PyObject *op, PyObject *name)
{
    PyObject *value = PyObject_GenericGetAttr(op, name);
    if (value != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return value;
    PyErr_Clear();
    return PyObject_GetAttr(((PhaseContext *)op)->target, name);
}

static int
phase_context_traverse(PyObject *op, visitproc visit, void *arg)
{
    PhaseContext *self = (PhaseContext *)op;
    Py_VISIT(self->begins);
    Py_VISIT(self->target);
    Py_VISIT(self->phase);
    Py_VISIT(self->request_ids);
    Py_VISIT(self->own);
    return 0;
}

static int
phase_context_clear(PyObject *op)
{
    PhaseContext *self = (PhaseContext *)op;
    Py_CLEAR(self->begins);
    Py_CLEAR(self->target);
    Py_CLEAR(self->phase);
    Py_CLEAR(self->request_ids);
    Py_CLEAR(self->start);
    Py_CLEAR(self->tid);
    Py_CLEAR(self->own);
    return 0;
}

static void
phase_context_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    phase_context_clear(op);
    PyObject_GC_Del(op);
}

static PyMethodDef phase_context_methods[] = {
    {"__enter__", phase_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))phase_exit, METH_FASTCALL, NULL},
    {NULL},
};

static PyTypeObject PhaseContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_vllm_ascend._hotpath.PhaseContext",
    .tp_doc = "The runner's context manager for one phase (handlers.model._PhaseContext in C).",
    .tp_basicsize = sizeof(PhaseContext),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_getattro = phase_getattro,
    .tp_methods = phase_context_methods,
    .tp_traverse = phase_context_traverse,
    .tp_clear = phase_context_clear,
    .tp_dealloc = phase_context_dealloc,
};

static int
phase_begins_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"phases", "namespace", "twin", "nullcontext", "record_task",
                            "expander", "record_span", "meter", "symbol", NULL};
    PhaseBegins *self = (PhaseBegins *)op;
    PyObject *phases, *ns, *twin, *nullcontext, *record_task, *expander, *record_span, *meter,
             *symbol;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OO!OOOOU", names, &PyDict_Type, &phases,
                                     &PyDict_Type, &ns, &twin, &PyType_Type, &nullcontext,
                                     &record_task, &expander, &record_span, &meter, &symbol))
        return -1;
    Py_XSETREF(self->phases, Py_NewRef(phases));
    Py_XSETREF(self->ns, Py_NewRef(ns));
    Py_XSETREF(self->twin, Py_NewRef(twin));
    Py_XSETREF(self->nullcontext, Py_NewRef(nullcontext));
    Py_XSETREF(self->record_task, Py_NewRef(record_task));
    Py_XSETREF(self->expander, Py_NewRef(expander));
    Py_XSETREF(self->record_span, Py_NewRef(record_span));
    Py_XSETREF(self->meter, Py_NewRef(meter));
    Py_XSETREF(self->symbol, Py_NewRef(symbol));
    self->on_at = slot_offset(meter, s_on);
    self->ready = 0;
    self->vectorcall = phase_begins_call;
    return 0;
}

static int
phase_begins_traverse(PyObject *op, visitproc visit, void *arg)
{
    PhaseBegins *self = (PhaseBegins *)op;
    Py_VISIT(self->phases);
    Py_VISIT(self->ns);
    Py_VISIT(self->twin);
    Py_VISIT(self->nullcontext);
    Py_VISIT(self->record_task);
    Py_VISIT(self->expander);
    Py_VISIT(self->record_span);
    Py_VISIT(self->meter);
    Py_VISIT(self->symbol);
    return 0;
}

static int
phase_begins_clear(PyObject *op)
{
    PhaseBegins *self = (PhaseBegins *)op;
    Py_CLEAR(self->phases);
    Py_CLEAR(self->ns);
    Py_CLEAR(self->twin);
    Py_CLEAR(self->nullcontext);
    Py_CLEAR(self->record_task);
    Py_CLEAR(self->expander);
    Py_CLEAR(self->record_span);
    Py_CLEAR(self->meter);
    Py_CLEAR(self->symbol);
    return 0;
}

static void
phase_begins_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    phase_begins_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyMemberDef phase_begins_members[] = {
    {"ready", T_BOOL, offsetof(PhaseBegins, ready), 0,
     "Set by the Python twin once this can do without it (role recorded, no NPU)."},
    {NULL},
};

static PyTypeObject PhaseBeginsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_vllm_ascend._hotpath.PhaseBegins",
    .tp_doc = "The after half of the runner phases' hook (handlers.model._phase_begins in C).",
    .tp_basicsize = sizeof(PhaseBegins),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(PhaseBegins, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_members = phase_begins_members,
    .tp_init = phase_begins_init,
    .tp_new = PyType_GenericNew,
    .tp_traverse = phase_begins_traverse,
    .tp_clear = phase_begins_clear,
    .tp_dealloc = phase_begins_dealloc,
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
        || (zero = PyLong_FromLong(0)) == NULL
        || (s_name = PyUnicode_InternFromString("name")) == NULL
        || (s_forward = PyUnicode_InternFromString("forward")) == NULL
        || (s_open_step = PyUnicode_InternFromString("_open_step")) == NULL
        || (s_step_request_ids = PyUnicode_InternFromString("_step_request_ids")) == NULL
        || (s_enter_result = PyUnicode_InternFromString("enter_result")) == NULL
        || (s_dunder_enter = PyUnicode_InternFromString("__enter__")) == NULL
        || (s_dunder_exit = PyUnicode_InternFromString("__exit__")) == NULL)
        return NULL;
    if (PyType_Ready(&AroundWrapperType) < 0 || PyType_Ready(&PhaseContextType) < 0
        || PyType_Ready(&PhaseBeginsType) < 0)
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
    Py_INCREF(&PhaseBeginsType);
    if (PyModule_AddObject(module, "PhaseBegins", (PyObject *)&PhaseBeginsType) < 0) {
        Py_DECREF(&PhaseBeginsType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
