/* Optional C accelerator for the hottest path of greenbridge: await_from_green in a fiber.
 *
 * It does exactly what the pure-Python implementation in _core.py does for the common case --
 * the caller is a fiber running inside its Task's step, the awaitable is a coroutine or has a
 * C-level __await__ -- and hands every other case to that implementation (``slow_path``):
 * foreign green contexts, directly resumed fibers, generator-based coroutines, errors.
 *
 * Why C: stepping an awaitable from Python ends every await in a StopIteration and costs a few
 * dozen bytecodes; PyIter_Send reports the return value without raising. Nothing else differs:
 * the iterator is stepped in the fiber's greenlet, every yielded value (None or a blocking Future;
 * anything else is failed as a Task fails it, through _core._bad_yield) goes to the fiber's parent
 * (its driver) through greenlet's own ``switch``, and whatever the driver throws in is passed to
 * the iterator's ``throw``, as in _core.await_from_green.
 *
 * At an await's first suspension it checks, as _core._check_suspension does, that the fiber runs
 * a step of its own Task (under an eager task factory a Task created in green code takes its first
 * step on the fiber's stack); it reads the fiber's ``_direct`` and ``_task`` slots in place.
 *
 * The module holds no state but the objects _core gives it in init(); it never owns a fiber.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef Py_T_OBJECT_EX  /* Python 3.11 */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

static PyObject *fiber_type;   /* _core._Fiber */
static PyObject *getcurrent;   /* greenlet.getcurrent */
static PyObject *slow_path;    /* _core._await_from_green_py */
static PyObject *suspend_check; /* _core._check_suspension: raises when the fiber may not suspend */
static PyObject *running_loop; /* asyncio._get_running_loop */
static PyObject *task_of;      /* _control._task_of: the Task a loop is stepping */
static PyObject *doc_holder;   /* keeps the docstring's UTF-8 buffer alive */
static PyObject *bad_yield;    /* _core._bad_yield: the error a Task throws in for a bad yield */
static PyObject *str_direct, *str_blocking, *str_parent, *str_switch, *str_throw, *str_value, *str_task;

static PyMethodDef await_def;

/* Where _Fiber keeps ``_direct`` and ``_task``: they are __slots__, so a fiber (whose type init()
   was given, and which await_from_green checks exactly) holds them at these offsets. Reading them
   there costs a load instead of an attribute lookup on every await. */
static Py_ssize_t direct_offset, task_offset;

/* A _Fiber slot as a new reference; AttributeError when it was never set, as getattr would. */
static PyObject *
fiber_slot(PyObject *fiber, Py_ssize_t offset, PyObject *name)
{
    PyObject *value = *(PyObject **)((char *)fiber + offset);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    return Py_NewRef(value);
}

/* The offset of slot ``name`` of ``type``, or -1 with an exception set. */
static Py_ssize_t
slot_offset(PyObject *type, const char *name)
{
    PyObject *descr = PyObject_GetAttrString(type, name);
    if (descr == NULL) {
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)
        && ((PyMemberDescrObject *)descr)->d_member->type == Py_T_OBJECT_EX) {
        offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    else {
        PyErr_Format(PyExc_TypeError, "the fiber type's %s must be a slot", name);
    }
    Py_DECREF(descr);
    return offset;
}

/* Fetch the exception being raised as one normalized object (3.11 has no GetRaisedException). */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* it.throw(exc): PYGEN_NEXT with the yielded value, PYGEN_RETURN with the return value, or
   PYGEN_ERROR with the exception set. */
static PySendResult
throw_into(PyObject *it, PyObject *exc, PyObject **out)
{
    PyObject *throw = PyObject_GetAttr(it, str_throw);
    if (throw == NULL) {
        /* An iterator without throw(): the exception surfaces at the await, as in Python. */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            *out = NULL;
            return PYGEN_ERROR;
        }
        PyErr_Clear();
        PyErr_Restore(Py_NewRef(Py_TYPE(exc)), Py_NewRef(exc), PyException_GetTraceback(exc));
        *out = NULL;
        return PYGEN_ERROR;
    }
    PyObject *res = PyObject_CallOneArg(throw, exc);
    Py_DECREF(throw);
    if (res != NULL) {
        *out = res;
        return PYGEN_NEXT;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        *out = NULL;
        return PYGEN_ERROR;
    }
    PyObject *stop = take_exception();
    PyObject *value = stop ? PyObject_GetAttr(stop, str_value) : NULL;
    Py_XDECREF(stop);
    *out = value;
    return value ? PYGEN_RETURN : PYGEN_ERROR;
}

/* 0 when ``fiber`` runs a step of its own Task (``fiber._task``), as it may suspend; else -1 with
   the exception set: NoGreenContext from _core._check_suspension, which says why. The same test
   as _check_suspension's, without its two Python calls on every await that suspends. */
static int
check_own_task(PyObject *fiber)
{
    PyObject *loop = PyObject_CallNoArgs(running_loop);
    if (loop == NULL) {
        return -1;
    }
    PyObject *task;
    if (loop == Py_None) {
        task = loop;
    }
    else {
        task = PyObject_CallOneArg(task_of, loop);
        Py_DECREF(loop);
        if (task == NULL) {
            return -1;
        }
    }
    PyObject *own = fiber_slot(fiber, task_offset, str_task);
    Py_DECREF(task);  /* only its identity is compared; the loop and the fiber hold it */
    if (own == NULL) {
        return -1;
    }
    Py_DECREF(own);
    if (own == task) {
        return 0;
    }
    PyObject *ok = PyObject_CallOneArg(suspend_check, fiber);  /* raises NoGreenContext */
    if (ok == NULL) {
        return -1;
    }
    Py_DECREF(ok);
    return 0;
}

static PyObject *
await_from_green(PyObject *module, PyObject *awaitable)
{
    PyObject *current = PyObject_CallNoArgs(getcurrent);
    if (current == NULL) {
        return NULL;
    }
    if ((PyObject *)Py_TYPE(current) != fiber_type) {
        Py_DECREF(current);
        return PyObject_CallOneArg(slow_path, awaitable);
    }
    PyObject *direct = fiber_slot(current, direct_offset, str_direct);
    if (direct == NULL) {
        Py_DECREF(current);
        return NULL;
    }
    Py_DECREF(direct);
    if (direct != Py_False) {
        Py_DECREF(current);
        return PyObject_CallOneArg(slow_path, awaitable);
    }

    PyObject *it;
    if (PyCoro_CheckExact(awaitable)) {
        it = Py_NewRef(awaitable);
    }
    else {
        PyAsyncMethods *am = Py_TYPE(awaitable)->tp_as_async;
        if (am == NULL || am->am_await == NULL) {
            Py_DECREF(current);
            return PyObject_CallOneArg(slow_path, awaitable);
        }
        it = am->am_await(awaitable);
        if (it == NULL) {
            Py_DECREF(current);
            return NULL;
        }
        if (!PyIter_Check(it)) {
            Py_DECREF(it);
            Py_DECREF(current);
            return PyObject_CallOneArg(slow_path, awaitable);  /* raises the proper TypeError */
        }
    }

    PyObject *out = NULL;
    int checked = 0;  /* the first suspension is allowed (suspend_check) */
    PySendResult status = PyIter_Send(it, Py_None, &out);
    while (status == PYGEN_NEXT) {
        if (out != Py_None) {
            /* Only None and blocking Futures go to the driver; anything else is a buggy
               awaitable, failed as a Task would fail it (see _core._bad_yield). */
            PyObject *blocking = PyObject_GetAttr(out, str_blocking);
            int ok = 0;
            if (blocking == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                    Py_DECREF(out);
                    out = NULL;
                    status = PYGEN_ERROR;
                    break;
                }
                PyErr_Clear();
            }
            else {
                ok = PyObject_IsTrue(blocking);
                Py_DECREF(blocking);
                if (ok < 0) {
                    Py_DECREF(out);
                    out = NULL;
                    status = PYGEN_ERROR;
                    break;
                }
            }
            if (!ok) {
                PyObject *exc = PyObject_CallOneArg(bad_yield, out);
                Py_DECREF(out);
                out = NULL;
                if (exc == NULL) {
                    status = PYGEN_ERROR;
                    break;
                }
                status = throw_into(it, exc, &out);
                Py_DECREF(exc);
                continue;
            }
        }
        if (!checked) {
            if (check_own_task(current) < 0) {
                /* Not the fiber's own Task (see _check_suspension): fail the awaitable. */
                Py_DECREF(out);
                out = NULL;
                PyObject *exc = take_exception();
                if (exc == NULL) {
                    status = PYGEN_ERROR;
                    break;
                }
                status = throw_into(it, exc, &out);
                Py_DECREF(exc);
                continue;
            }
            checked = 1;
        }
        /* The parent is looked up at every suspension, never kept: under an eager task factory
         * the fiber's first step ran in its creator, and _core._drive re-parents it to the loop
         * greenlet before the next one. */
        PyObject *parent = PyObject_GetAttr(current, str_parent);
        if (parent == NULL) {
            Py_DECREF(out);
            out = NULL;
            status = PYGEN_ERROR;
            break;
        }
        PyObject *sent = PyObject_CallMethodOneArg(parent, str_switch, out);
        Py_DECREF(parent);
        Py_DECREF(out);
        out = NULL;
        if (sent != NULL) {
            status = PyIter_Send(it, sent, &out);
            Py_DECREF(sent);
        }
        else {
            /* Thrown in by the driver (cancellation, a failed future): pass it down. */
            PyObject *exc = take_exception();
            if (exc == NULL) {
                status = PYGEN_ERROR;
                break;
            }
            status = throw_into(it, exc, &out);
            Py_DECREF(exc);
        }
    }
    Py_DECREF(it);
    Py_DECREF(current);
    if (status == PYGEN_RETURN) {
        return out;
    }
    return NULL;
}

static PyObject *
init(PyObject *module, PyObject *args)
{
    PyObject *fiber, *current, *slow, *check, *doc, *bad, *loop, *of;
    if (!PyArg_ParseTuple(args, "OOOOUOOO:init", &fiber, &current, &slow, &check, &doc, &bad,
                          &loop, &of)) {
        return NULL;
    }
    if ((direct_offset = slot_offset(fiber, "_direct")) < 0
        || (task_offset = slot_offset(fiber, "_task")) < 0) {
        return NULL;
    }
    Py_XSETREF(running_loop, Py_NewRef(loop));
    Py_XSETREF(task_of, Py_NewRef(of));
    Py_XSETREF(suspend_check, Py_NewRef(check));
    Py_XSETREF(fiber_type, Py_NewRef(fiber));
    Py_XSETREF(getcurrent, Py_NewRef(current));
    Py_XSETREF(slow_path, Py_NewRef(slow));
    Py_XSETREF(doc_holder, Py_NewRef(doc));
    Py_XSETREF(bad_yield, Py_NewRef(bad));
    const char *utf8 = PyUnicode_AsUTF8(doc_holder);
    if (utf8 == NULL) {
        return NULL;
    }
    await_def.ml_name = "await_from_green";
    await_def.ml_meth = (PyCFunction)await_from_green;
    await_def.ml_flags = METH_O;
    await_def.ml_doc = utf8;
    PyObject *name = PyModule_GetNameObject(module);
    if (name == NULL) {
        return NULL;
    }
    PyObject *func = PyCFunction_NewEx(&await_def, NULL, name);
    Py_DECREF(name);
    return func;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS,
     "init(fiber_type, getcurrent, slow_path, suspend_check, doc, bad_yield, get_running_loop, "
     "task_of) -> the C await_from_green"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "greenbridge._speedups",
    "Optional C accelerator for await_from_green (see the comment at the top of the source).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_direct = PyUnicode_InternFromString("_direct");
    str_blocking = PyUnicode_InternFromString("_asyncio_future_blocking");
    str_parent = PyUnicode_InternFromString("parent");
    str_switch = PyUnicode_InternFromString("switch");
    str_throw = PyUnicode_InternFromString("throw");
    str_value = PyUnicode_InternFromString("value");
    str_task = PyUnicode_InternFromString("_task");
    if (!str_direct || !str_blocking || !str_parent || !str_switch || !str_throw || !str_value
        || !str_task) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
