/* Optional C accelerator for the hottest paths of greenbridge: await_from_green in a fiber, and
 * (below, "Direct resumption") _control._park and _control._resume, the two steps of every
 * direct resumption; the driver of a spawn_green call (_core._drive, "The driver"); and (near
 * the end) a connection's receive buffer, _receive_buffer's class, _waiter's Waiter and
 * WakeBatch, and a connection's read and write paths (_protocol, "Connections").
 * Each does what the Python code it replaces does, which stays and is used when this module is
 * missing or GREENBRIDGE_NO_SPEEDUPS=1 is set.
 *
 * await_from_green does exactly what the pure-Python implementation in _core.py does for the
 * common case -- the caller is a fiber running inside its Task's step, the awaitable is a
 * coroutine or has a C-level __await__ -- and hands every other case to that implementation
 * (``slow_path``): foreign green contexts, directly resumed fibers, generator-based coroutines,
 * errors.
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
 * The module holds no state but the objects _core and _control give it in init() and
 * init_control(); it never owns a fiber.
 * (And the helpers _waiter gives init_waiter: see "Waiter and WakeBatch", near the end; and
 * _protocol's, given to init_connection: see "Connections", after it.)
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
static PyObject *str_get_loop;

static PyMethodDef await_def;

/* Where _Fiber keeps ``_direct``, ``_task`` and ``_park``: they are __slots__, so a fiber (whose
   type init() was given, and which the functions here check exactly) holds them at these offsets.
   Reading them there costs a load instead of an attribute lookup on every await. */
static Py_ssize_t direct_offset, task_offset, park_offset;

/* The running loop, as asyncio._get_running_loop() returns it (a new reference: the loop or
   None), or NULL with an exception set.

   On Python 3.11 that call makes a getpid() system call every time: asyncio keeps the running
   loop in a holder object in the thread state's dict, with the pid that set it, and a loop
   inherited across a fork does not count as running. A spawn took one such call (a few hundred
   ns in a virtual machine, a fifth of the spawn). So on 3.11 this reads the holder itself: the
   same dict entry, the same test of its pid, against this process's pid kept here (taken at
   import, and again in the child of every fork). The holder is 3.11's PyRunningLoopHolder
   (Modules/_asynciomodule.c), recognised by its type's name and size when first seen; anything
   else -- another layout, the pure-Python asyncio, no entry -- and every other version (3.12 made
   the call a lookup without a system call) take the call itself. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(MS_WINDOWS)
#include <unistd.h>
#include <pthread.h>
#define RUNNING_LOOP_HOLDER 1
typedef struct {
    PyObject_HEAD
    PyObject *rl_loop;
    pid_t rl_pid;
} holder_layout;
static PyObject *holder_key;        /* "__asyncio_running_event_loop__" */
static PyTypeObject *holder_type;   /* the holder's type, once seen and recognised */
static int holder_unknown;          /* an entry of another type was seen: always take the call */
static volatile pid_t holder_pid;   /* this process's pid */

static void
holder_after_fork(void)
{
    holder_pid = getpid();
}
#endif

static PyObject *
running_loop_now(void)
{
#ifdef RUNNING_LOOP_HOLDER
    PyObject *dict = holder_unknown ? NULL : PyThreadState_GetDict();
    if (dict != NULL) {
        PyObject *holder = PyDict_GetItemWithError(dict, holder_key);  /* borrowed */
        if (holder != NULL && holder_type == NULL) {
            PyTypeObject *type = Py_TYPE(holder);
            if (strcmp(type->tp_name, "_RunningLoopHolder") == 0
                && type->tp_basicsize == (Py_ssize_t)sizeof(holder_layout)) {
                holder_type = (PyTypeObject *)Py_NewRef(type);
            }
            else {
                holder_unknown = 1;
            }
        }
        if (holder != NULL && Py_TYPE(holder) == holder_type) {
            holder_layout *h = (holder_layout *)holder;
            if (h->rl_pid == holder_pid && h->rl_loop != NULL) {
                return Py_NewRef(h->rl_loop);
            }
        }
        else if (holder == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
#endif
    return PyObject_CallNoArgs(running_loop);
}

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
        PyErr_Format(PyExc_TypeError, "%R.%s must be a slot", type, name);
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

/* Raise ``exc`` (an exception instance) with its own traceback, as ``raise exc`` does. */
static void
raise_exception(PyObject *exc)
{
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), Py_NewRef(exc), PyException_GetTraceback(exc));
}

/* Ready ``type`` and add it to ``module`` as ``name`` (each type's registration, called by
   PyInit__speedups). -1 with an exception set. */
static int
add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0) {
        return -1;
    }
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* greenlet's C API: the capsule greenlet._C_API, an array of functions in the numbering of
   greenlet.h, which greenlet keeps stable. Switching through it rather than calling the
   ``switch`` method takes the method call's C frames off a switching fiber's stack, which greenlet
   keeps a copy of for every suspended fiber (about 130 B each on CPython 3.11). Taken by
   take_fiber_type, and only when its first entry is the fiber type's base (greenlet.greenlet);
   otherwise NULL, and the ``switch`` method is called. */
static void **greenlet_api;
#define GREENLET_TYPE_NUM 0
#define GREENLET_GETCURRENT_NUM 4
#define GREENLET_SWITCH_NUM 6
#define GREENLET_GET_PARENT_NUM 11
typedef PyObject *(*greenlet_switch_fn)(PyObject *, PyObject *, PyObject *);
typedef PyObject *(*greenlet_current_fn)(void);
typedef PyObject *(*greenlet_parent_fn)(PyObject *);
typedef int (*greenlet_set_parent_fn)(PyObject *, PyObject *);
#define GREENLET_SET_PARENT_NUM 7

/* greenlet.getcurrent() as a new reference (the ``getcurrent`` init was given is greenlet's; with
   the C API, without a call through the function object). */
static inline PyObject *
current_greenlet(void)
{
    if (greenlet_api == NULL) {
        return PyObject_CallNoArgs(getcurrent);
    }
    return ((greenlet_current_fn)greenlet_api[GREENLET_GETCURRENT_NUM])();
}

/* g.parent as a new reference (g is a greenlet; None when it has none, as the attribute). */
static inline PyObject *
greenlet_parent(PyObject *g)
{
    if (greenlet_api == NULL) {
        return PyObject_GetAttr(g, str_parent);
    }
    PyObject *parent = ((greenlet_parent_fn)greenlet_api[GREENLET_GET_PARENT_NUM])(g);
    if (parent == NULL && !PyErr_Occurred()) {
        parent = Py_NewRef(Py_None);
    }
    return parent;
}

/* g.parent = parent: 0, or -1 with the error (ValueError for a cycle, as the attribute). */
static inline int
set_greenlet_parent(PyObject *g, PyObject *parent)
{
    if (greenlet_api == NULL) {
        return PyObject_SetAttr(g, str_parent, parent);
    }
    return ((greenlet_set_parent_fn)greenlet_api[GREENLET_SET_PARENT_NUM])(g, parent);
}

/* g.switch(value) as a new reference. Inlined: a frame of its own would deepen the stack of every
   suspended fiber again. */
static inline Py_ALWAYS_INLINE PyObject *
green_switch(PyObject *g, PyObject *value)
{
    if (greenlet_api == NULL) {
        return PyObject_CallMethodOneArg(g, str_switch, value);
    }
    PyObject *args = PyTuple_Pack(1, value);
    if (args == NULL) {
        return NULL;
    }
    PyObject *res = ((greenlet_switch_fn)greenlet_api[GREENLET_SWITCH_NUM])(g, args, NULL);
    Py_DECREF(args);
    return res;
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
        raise_exception(exc);
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

/* The loop of ``fiber``'s own Task (``fiber._task``) when that Task is the one being stepped now,
   as a new reference; else NULL, with an exception set only on error (no Task yet, another Task
   current: the caller takes its slow path).

   This stands for asyncio._get_running_loop() where the answer can be had without it: on Python
   3.11 that call makes a getpid() system call each time (it checks the loop was not inherited
   across a fork), which was one system call per suspension and per park. The two are the same
   loop whenever this finds the Task current: while this thread runs the fiber, its Task can be in
   a step only on this thread (greenlet switches only within a thread), whose running loop is the
   Task's. */
static PyObject *
own_task_loop(PyObject *fiber)
{
    PyObject *own = fiber_slot(fiber, task_offset, str_task);
    if (own == NULL || own == Py_None) {
        Py_XDECREF(own);
        return NULL;
    }
    PyObject *loop = PyObject_CallMethodNoArgs(own, str_get_loop);
    PyObject *task = loop == NULL ? NULL : PyObject_CallOneArg(task_of, loop);
    Py_DECREF(own);
    Py_XDECREF(task);  /* only its identity is compared; the loop and the fiber hold it */
    if (task != own) {
        Py_XDECREF(loop);
        return NULL;
    }
    return loop;
}

/* 0 when ``fiber`` runs a step of its own Task (``fiber._task``), as it may suspend; else -1 with
   the exception set: NoGreenContext from _core._check_suspension, which says why. The same test
   as _check_suspension's, without its Python calls on every await that suspends (the slow path
   when own_task_loop does not find the Task current). */
static int
check_own_task(PyObject *fiber)
{
    PyObject *loop = own_task_loop(fiber);
    if (loop != NULL) {
        Py_DECREF(loop);
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *ok = PyObject_CallOneArg(suspend_check, fiber);  /* raises NoGreenContext */
    if (ok == NULL) {
        return -1;
    }
    Py_DECREF(ok);
    return 0;
}

/* 1 when ``out`` is for the Task (None or a Future whose _asyncio_future_blocking is true), 0 when
   not (a hand-over of the foreign convention, to the driver; a bad yield, to await_from_green),
   -1 on error. */
static int
for_the_task(PyObject *out)
{
    if (out == Py_None) {
        return 1;
    }
    PyObject *blocking = PyObject_GetAttr(out, str_blocking);
    if (blocking == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    int res = PyObject_IsTrue(blocking);
    Py_DECREF(blocking);
    return res;
}

static PyObject *
await_from_green(PyObject *module, PyObject *awaitable)
{
    PyObject *current = current_greenlet();
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
            int ok = for_the_task(out);
            if (ok < 0) {
                Py_DECREF(out);
                out = NULL;
                status = PYGEN_ERROR;
                break;
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
        PyObject *parent = greenlet_parent(current);
        if (parent == NULL) {
            Py_DECREF(out);
            out = NULL;
            status = PYGEN_ERROR;
            break;
        }
        PyObject *sent = green_switch(parent, out);
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

/* Take the fiber type and greenlet.getcurrent (init and init_control each get them): the slot
   offsets are read from the type's member descriptors. -1 with an exception set. */
static int
take_fiber_type(PyObject *fiber, PyObject *current)
{
    if ((direct_offset = slot_offset(fiber, "_direct")) < 0
        || (task_offset = slot_offset(fiber, "_task")) < 0
        || (park_offset = slot_offset(fiber, "_park")) < 0) {
        return -1;
    }
    Py_XSETREF(fiber_type, Py_NewRef(fiber));
    Py_XSETREF(getcurrent, Py_NewRef(current));
    if (greenlet_api == NULL && PyType_Check(fiber)) {
        void **api = (void **)PyCapsule_Import("greenlet._C_API", 0);
        if (api == NULL) {
            PyErr_Clear();  /* the method calls will do */
        }
        else if (api[GREENLET_TYPE_NUM] == (void *)((PyTypeObject *)fiber)->tp_base) {
            greenlet_api = api;
        }
    }
    return 0;
}

static PyObject *
init(PyObject *module, PyObject *args)
{
    PyObject *fiber, *current, *slow, *check, *doc, *bad, *loop, *of;
    if (!PyArg_ParseTuple(args, "OOOOUOOO:init", &fiber, &current, &slow, &check, &doc, &bad,
                          &loop, &of)) {
        return NULL;
    }
    if (take_fiber_type(fiber, current) < 0) {
        return NULL;
    }
    Py_XSETREF(running_loop, Py_NewRef(loop));
    Py_XSETREF(task_of, Py_NewRef(of));
    Py_XSETREF(suspend_check, Py_NewRef(check));
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

/* -- Direct resumption: _control._park and _control._resume in C ------------------------------
 *
 * The same steps as the Python functions in _control.py, in the same order (read their docstrings
 * and that module's memo: rules 1, 3, 5 and 7). Each runs on every direct resumption -- a read
 * woken by its transport costs one of each -- and the interpreter's share of them is what this
 * saves. Being C, neither can be interrupted between two of its steps: a KeyboardInterrupt can
 * land only in Python code the fiber runs after the switch, whose frames the SIGINT handler
 * inspects as before (_control._ki_protected).
 */
static PyObject *parked, *woken;          /* _control._PARKED, _control._WOKEN */
static PyObject *pass_to_driver;         /* _control._pass_to_driver */
static PyObject *enter_task, *leave_task; /* asyncio.tasks._enter_task, _leave_task */
static PyObject *swap_current_task;      /* asyncio.tasks._swap_current_task; NULL before 3.12 */
static PyObject *get_running_loop;       /* asyncio.get_running_loop (raises outside a loop) */
static PyObject *str_park, *str_done, *str_set_result, *str_create_future;

/* Store ``value`` in the _Fiber slot at ``offset`` (what assigning the attribute does). */
static void
fiber_set(PyObject *fiber, Py_ssize_t offset, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)fiber + offset);
    Py_XSETREF(*slot, Py_NewRef(value));
}

static int
check_fiber(PyObject *fiber)
{
    if ((PyObject *)Py_TYPE(fiber) != fiber_type) {
        PyErr_Format(PyExc_TypeError, "expected a greenbridge fiber, got %.100s",
                     Py_TYPE(fiber)->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *
call_method0(PyObject *obj, PyObject *name)
{
    PyObject *args[1] = {obj};
    return PyObject_VectorcallMethod(name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *
call2(PyObject *fn, PyObject *a, PyObject *b)
{
    PyObject *args[2] = {a, b};
    return PyObject_Vectorcall(fn, args, 2, NULL);
}

/* The truth of a value; -1 with an error. */
static int
truth(PyObject *v)
{
    return v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
}

/* The truth of obj.name(): 1, 0, or -1 on error. */
static int
call_truth(PyObject *obj, PyObject *name)
{
    PyObject *r = call_method0(obj, name);
    if (r == NULL) {
        return -1;
    }
    int res = truth(r);
    Py_DECREF(r);
    return res;
}

/* 1 when future.done(), 0 when not, -1 on error. */
static int
future_done(PyObject *future)
{
    return call_truth(future, str_done);
}

/* fiber._direct = fiber.parent.switch(value) is _WOKEN, and False when the switch raises.
   Inlined, as park_fiber is: each C frame between the fiber's Python code and greenlet's switch
   is on the saved stack of every suspended fiber. */
static inline Py_ALWAYS_INLINE PyObject *
switch_to_parent(PyObject *fiber, PyObject *value)
{
    PyObject *parent = greenlet_parent(fiber);
    if (parent == NULL) {
        return NULL;
    }
    PyObject *sent = green_switch(parent, value);
    Py_DECREF(parent);
    if (sent == NULL) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        fiber_set(fiber, direct_offset, Py_False);
        PyErr_Restore(type, exc, tb);
        return NULL;
    }
    fiber_set(fiber, direct_offset, sent == woken ? Py_True : Py_False);
    Py_DECREF(sent);
    Py_RETURN_NONE;
}

static inline Py_ALWAYS_INLINE PyObject *
park_fiber(PyObject *fiber)
{
    if (check_fiber(fiber) < 0) {
        return NULL;
    }
    PyObject *direct = fiber_slot(fiber, direct_offset, str_direct);
    if (direct == NULL) {
        return NULL;
    }
    int is_direct = PyObject_IsTrue(direct);
    Py_DECREF(direct);
    if (is_direct < 0) {
        return NULL;
    }
    PyObject *future = fiber_slot(fiber, park_offset, str_park);
    if (future == NULL) {
        return NULL;
    }
    if (is_direct) {
        if (future == Py_None) {
            Py_DECREF(future);
            PyErr_SetString(PyExc_AssertionError, "a directly resumed fiber has no park Future");
            return NULL;
        }
        int done = future_done(future);
        Py_DECREF(future);
        if (done < 0) {
            return NULL;
        }
        if (done) {
            /* Cancelled while we ran outside the Task: let the Task deliver it. */
            fiber_set(fiber, direct_offset, Py_False);
        }
        return switch_to_parent(fiber, parked);
    }
    int fresh = future == Py_None;
    if (!fresh && (fresh = future_done(future)) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    if (fresh) {
        Py_DECREF(future);
        /* The running loop. When own_task_loop finds it, the Task it is stepping is already the
           one recorded in ``_task``; else the Task is looked up and recorded. */
        PyObject *loop = own_task_loop(fiber);
        int recorded = loop != NULL;
        if (!recorded && (PyErr_Occurred() || (loop = PyObject_CallNoArgs(get_running_loop)) == NULL)) {
            return NULL;
        }
        future = call_method0(loop, str_create_future);
        if (future == NULL) {
            Py_DECREF(loop);
            return NULL;
        }
        fiber_set(fiber, park_offset, future);
        PyObject *task = recorded ? NULL : PyObject_CallOneArg(task_of, loop);
        Py_DECREF(loop);
        if (!recorded) {
            if (task == NULL) {
                Py_DECREF(future);
                return NULL;
            }
            fiber_set(fiber, task_offset, task);
            Py_DECREF(task);
        }
    }
    if (PyObject_SetAttr(future, str_blocking, Py_True) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    PyObject *res = switch_to_parent(fiber, future);
    Py_DECREF(future);
    return res;
}

static PyObject *
park(PyObject *module, PyObject *fiber)
{
    return park_fiber(fiber);
}

/* Make ``waker_task`` current again on ``loop`` after the fiber ran as ``task``. An exception
   already raised (the fiber's) is kept: when the restoring fails too, its error is raised with
   the first as __context__, as a failing ``finally`` block would. -1 when an exception is set. */
static int
restore_task(PyObject *loop, PyObject *task, PyObject *waker_task)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyObject *r;
    if (swap_current_task != NULL) {
        r = call2(swap_current_task, loop, waker_task);
    }
    else {
        r = call2(leave_task, loop, task);
        if (r != NULL && waker_task != Py_None) {
            Py_DECREF(r);
            r = call2(enter_task, loop, waker_task);
        }
    }
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_Restore(type, exc, tb);
        return exc == NULL ? 0 : -1;
    }
    if (exc != NULL) {
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb != NULL) {
            PyException_SetTraceback(exc, tb);
        }
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyObject *type2, *exc2, *tb2;
        PyErr_Fetch(&type2, &exc2, &tb2);
        PyErr_NormalizeException(&type2, &exc2, &tb2);
        PyException_SetContext(exc2, exc);  /* steals exc */
        PyErr_Restore(type2, exc2, tb2);
    }
    return -1;
}

/* The fiber's Task becomes current on ``loop`` in place of the waker's; the waker's Task (or
   None) as a new reference, NULL on error with nothing changed. */
static PyObject *
enter_fiber_task(PyObject *loop, PyObject *task)
{
    if (swap_current_task != NULL) {  /* Python >= 3.12: one call each way */
        return call2(swap_current_task, loop, task);
    }
    PyObject *waker_task = PyObject_CallOneArg(task_of, loop);
    if (waker_task == NULL) {
        return NULL;
    }
    PyObject *r;
    if (waker_task != Py_None) {
        if ((r = call2(leave_task, loop, waker_task)) == NULL) {
            Py_DECREF(waker_task);
            return NULL;
        }
        Py_DECREF(r);
    }
    if ((r = call2(enter_task, loop, task)) == NULL) {
        if (waker_task != Py_None) {  /* put the waker's Task back before failing */
            PyObject *type, *exc, *tb;
            PyErr_Fetch(&type, &exc, &tb);
            PyObject *back = call2(enter_task, loop, waker_task);
            if (back == NULL) {
                PyErr_Clear();
            }
            Py_XDECREF(back);
            PyErr_Restore(type, exc, tb);
        }
        Py_DECREF(waker_task);
        return NULL;
    }
    Py_DECREF(r);
    return waker_task;
}

static PyObject *
resume(PyObject *module, PyObject *fiber)
{
    if (check_fiber(fiber) < 0) {
        return NULL;
    }
    PyObject *future = fiber_slot(fiber, park_offset, str_park);
    if (future == NULL) {
        return NULL;
    }
    int done = future == Py_None ? 1 : future_done(future);
    if (done) {
        Py_DECREF(future);
        if (done < 0) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    PyObject *waker = current_greenlet();
    PyObject *parent = waker ? greenlet_parent(fiber) : NULL;
    if (parent == NULL) {
        Py_XDECREF(waker);
        Py_DECREF(future);
        return NULL;
    }
    /* Only identities are compared: the fiber holds its parent, the caller is running. */
    Py_DECREF(parent);
    Py_DECREF(waker);
    if (waker != parent || (PyObject *)Py_TYPE(waker) == fiber_type) {
        /* Not from the parent, or the parent is a fiber (rule 1): through the fiber's Task. */
        fiber_set(fiber, direct_offset, Py_False);
        PyObject *r = PyObject_CallMethodOneArg(future, str_set_result, Py_None);
        Py_DECREF(future);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    /* The fiber runs as its own Task, as far as asyncio.current_task() can tell, for as long as
       it runs here; whatever Task the waker runs in is current again afterwards. */
    PyObject *loop = call_method0(future, str_get_loop);
    Py_DECREF(future);
    if (loop == NULL) {
        return NULL;
    }
    PyObject *task = fiber_slot(fiber, task_offset, str_task);
    if (task == NULL || task == Py_None) {
        if (task != NULL) {  /* recorded by _park, which created the Future inside the Task */
            Py_DECREF(task);
            PyErr_SetString(PyExc_AssertionError, "a parked fiber has no Task");
        }
        Py_DECREF(loop);
        return NULL;
    }
    PyObject *waker_task = enter_fiber_task(loop, task);
    if (waker_task == NULL) {
        Py_DECREF(task);
        Py_DECREF(loop);
        return NULL;
    }
    fiber_set(fiber, direct_offset, Py_True);
    PyObject *out = green_switch(fiber, woken);
    int failed = restore_task(loop, task, waker_task);
    Py_DECREF(waker_task);
    Py_DECREF(task);
    Py_DECREF(loop);
    if (failed) {
        Py_XDECREF(out);
        return NULL;
    }
    if (out != parked) {
        /* The foreign convention: the fiber switched to us with an awaitable for its driver. */
        PyObject *r = call2(pass_to_driver, fiber, out);
        Py_DECREF(out);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    else {
        Py_DECREF(out);
    }
    Py_RETURN_TRUE;
}

static PyObject *
init_control(PyObject *module, PyObject *args)
{
    PyObject *fiber, *current, *p, *w, *pass, *of, *enter, *leave, *swap, *running;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOO:init_control", &fiber, &current, &p, &w, &pass, &of,
                          &enter, &leave, &swap, &running)) {
        return NULL;
    }
    if (take_fiber_type(fiber, current) < 0) {
        return NULL;
    }
    Py_XSETREF(parked, Py_NewRef(p));
    Py_XSETREF(woken, Py_NewRef(w));
    Py_XSETREF(pass_to_driver, Py_NewRef(pass));
    Py_XSETREF(task_of, Py_NewRef(of));
    Py_XSETREF(enter_task, Py_NewRef(enter));
    Py_XSETREF(leave_task, Py_NewRef(leave));
    Py_XSETREF(swap_current_task, swap == Py_None ? NULL : Py_NewRef(swap));
    Py_XSETREF(get_running_loop, Py_NewRef(running));
    PyObject *park_fn = PyObject_GetAttrString(module, "park");
    PyObject *resume_fn = park_fn ? PyObject_GetAttrString(module, "resume") : NULL;
    if (resume_fn == NULL) {
        Py_XDECREF(park_fn);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, park_fn, resume_fn);
    Py_DECREF(park_fn);
    Py_DECREF(resume_fn);
    return res;
}

/* -- The driver: _core._drive in C ---------------------------------------------------------------
 *
 * The object ``spawn_green``'s coroutine awaits: the same steps as the generator _core._drive
 * (read its docstring and the memo of _core), as an iterator the coroutine delegates to. It takes
 * a fiber on its first step, switches into it, yields to the Task what the fiber hands over (None
 * or a blocking Future), throws into the fiber what the Task throws in, awaits on the fiber's
 * behalf an awaitable handed over by the foreign convention, and returns the function's result or
 * raises its exception.
 *
 * Why C. Memory: a parked fiber's driver is a generator and, once greenlet has switched out of
 * it, a frame object -- about 600 B per suspended fiber on CPython 3.11; this object is 96.
 * Time: the coroutine steps it through ``am_send`` (PyIter_Send), with no StopIteration when the
 * call finishes, and no interpreter between the Task and the fiber.
 *
 * It behaves as the generator does, as the coroutine and the Task see it: ``send``, ``throw``
 * (one to three arguments) and ``close`` have a generator's semantics, including "generator
 * already executing", a StopIteration raised by the function turned into RuntimeError (PEP 479)
 * and GeneratorExit handling in close(); a finalizer closes a suspended driver, as a generator's
 * does. What differs: no ``_drive`` frame on tracebacks, and no line of it a trace function or a
 * KeyboardInterrupt can land on.
 */
static PyObject *finished, *raised;       /* _core._FINISHED, _core._RAISED */
static PyObject *fiber_main;              /* _core._fiber_main: a new fiber's run function */
static PyObject *local_state;             /* _core._local: this thread's pool is its ``idle`` */
static PyObject *idle_fibers;             /* _core._idle_fibers: makes the pool on first use */
static PyObject *guard_pool;              /* _core._guard_pool(idle, loop) */
static PyObject *await_iter;              /* _core._await_iter: the iterator ``await x`` steps */
static PyObject *str_idle, *str_loop, *str_gr_context, *str_close, *str_forking;
static Py_ssize_t call_offset, handover_offset, outcome_offset;

enum { DRIVER_FRESH, DRIVER_SUSPENDED, DRIVER_RUNNING, DRIVER_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *fn, *args, *kwargs;  /* the call, until the first step */
    PyObject *fiber;               /* from the first step until the outcome */
    PyObject *sub;                 /* what it awaits for the fiber (the foreign convention) */
    PyObject *child;               /* a forked fiber's _switch._Child, until the first step */
    PyObject *label;               /* the function the fiber runs for the caller: its name */
    int state;
} DriverObject;

static PyTypeObject Driver_Type;

/* Drop everything the driver holds: it is done. */
static void
driver_finish(DriverObject *self)
{
    self->state = DRIVER_DONE;
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->fiber);
    Py_CLEAR(self->sub);
    Py_CLEAR(self->child);
}

/* fiber.<name>(arg) as a new reference (arg NULL: no argument). */
static PyObject *
fiber_call(PyObject *fiber, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {fiber, arg};
    return PyObject_VectorcallMethod(name, args, (arg ? 2 : 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
}

/* Throw the exception being raised into the fiber: what ``except BaseException as exc:
   out = fiber.throw(exc)`` does. */
static PyObject *
throw_raised(PyObject *fiber)
{
    PyObject *exc = take_exception();
    if (exc == NULL) {
        return NULL;
    }
    PyObject *out = fiber_call(fiber, str_throw, exc);
    Py_DECREF(exc);
    return out;
}

static PyObject *fibers_new_fiber(PyObject *run, PyObject *parent);  /* Fibers' bookkeeping */

/* The first step: take a fiber (from the pool, or a new one) and switch into it with the call.
   The fiber's first hand-over as a new reference, or NULL. */
static PyObject *
driver_start(DriverObject *self)
{
    if (!PyCallable_Check(self->fn)) {
        PyObject *name = PyType_GetName(Py_TYPE(self->fn));
        if (name != NULL) {
            PyErr_Format(PyExc_TypeError, "spawn_green() needs a callable, got %R", name);
            Py_DECREF(name);
        }
        return NULL;
    }
    PyObject *driver = current_greenlet();
    if (driver == NULL) {
        return NULL;
    }
    PyObject *fiber = NULL, *out = NULL;
    PyObject *loop = running_loop_now();
    if (loop == NULL) {
        goto done;
    }
    PyObject *idle = PyObject_GetAttr(local_state, str_idle);
    if (idle == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            goto done;
        }
        PyErr_Clear();
        if ((idle = PyObject_CallNoArgs(idle_fibers)) == NULL) {
            goto done;
        }
    }
    if (!PyList_Check(idle)) {
        PyErr_SetString(PyExc_TypeError, "the fiber pool must be a list");
        Py_DECREF(idle);
        goto done;
    }
    PyObject *guarded = PyObject_GetAttr(idle, str_loop);
    if (guarded == NULL) {
        Py_DECREF(idle);
        goto done;
    }
    Py_DECREF(guarded);  /* only its identity is compared */
    if (guarded != loop) {
        PyObject *r = call2(guard_pool, idle, loop);
        if (r == NULL) {
            Py_DECREF(idle);
            goto done;
        }
        Py_DECREF(r);
    }
    Py_ssize_t n = PyList_GET_SIZE(idle);
    int pooled = n > 0;
    if (pooled) {
        fiber = Py_NewRef(PyList_GET_ITEM(idle, n - 1));
        int err = PyList_SetSlice(idle, n - 1, n, NULL);
        Py_DECREF(idle);
        if (err < 0 || set_greenlet_parent(fiber, driver) < 0) {
            goto done;
        }
    }
    else {
        Py_DECREF(idle);
        if ((fiber = fibers_new_fiber(fiber_main, driver)) == NULL) {
            goto done;
        }
        if ((PyObject *)Py_TYPE(fiber) != fiber_type) {
            PyErr_SetString(PyExc_TypeError, "the fiber type made something else");
            goto done;
        }
        /* A new fiber starts with no arguments: its call waits in _call (see _fiber_main). */
        PyObject *call = PyTuple_Pack(3, self->fn, self->args, self->kwargs);
        if (call == NULL) {
            goto done;
        }
        fiber_set(fiber, call_offset, call);
        Py_DECREF(call);
    }
    PyObject *context = PyObject_GetAttr(driver, str_gr_context);
    if (context == NULL) {
        goto done;
    }
    int err = PyObject_SetAttr(fiber, str_gr_context, context);
    Py_DECREF(context);
    if (err < 0) {
        goto done;
    }
    /* The Task stepping the driver: the fiber's own (none when stepped by hand, with no loop). */
    if (loop == Py_None) {
        fiber_set(fiber, task_offset, Py_None);
    }
    else {
        PyObject *task = PyObject_CallOneArg(task_of, loop);
        if (task == NULL) {
            goto done;
        }
        fiber_set(fiber, task_offset, task);
        Py_DECREF(task);
    }
    self->fiber = Py_NewRef(fiber);
    /* The call is the fiber's now: this object keeps nothing of it (as ``del fn, args, kwargs``
       after the first switch of the generator, which held them only during the switch). */
    PyObject *fn = self->fn, *args = self->args, *kwargs = self->kwargs;
    self->fn = self->args = self->kwargs = NULL;
    if (pooled) {
        PyObject *call[4] = {fiber, fn, args, kwargs};
        out = PyObject_VectorcallMethod(str_switch, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    else {
        out = fiber_call(fiber, str_switch, NULL);
    }
    Py_DECREF(fn);
    Py_DECREF(args);
    Py_DECREF(kwargs);
done:
    Py_XDECREF(loop);
    Py_XDECREF(fiber);
    Py_DECREF(driver);
    return out;
}

/* Re-parent the fiber to whoever steps the Task now (rule 2 of _control): normally the loop
   greenlet, but under asyncio.eager_task_factory a Task's first step ran inside its creator. */
static int
driver_adopt(PyObject *fiber)
{
    PyObject *driver = current_greenlet();
    if (driver == NULL) {
        return -1;
    }
    PyObject *parent = greenlet_parent(fiber);
    int err = parent == NULL ? -1 : 0;
    if (parent != NULL && parent != driver) {
        err = set_greenlet_parent(fiber, driver);
    }
    Py_XDECREF(parent);
    Py_DECREF(driver);
    return err;
}

/* The fiber finished: take its outcome. PYGEN_RETURN with the result, or PYGEN_ERROR with its
   exception raised, the _fiber_main frame dropped from the traceback. */
static PySendResult
driver_outcome(DriverObject *self, PyObject **result)
{
    PyObject *fiber = self->fiber;
    PyObject **slot = (PyObject **)((char *)fiber + outcome_offset);
    PyObject *outcome = *slot;  /* the reference the slot held is ours now */
    *slot = NULL;
    fiber_set(fiber, outcome_offset, Py_None);
    /* An idle fiber must not keep the Task's context alive. */
    int err = PyObject_SetAttr(fiber, str_gr_context, Py_None);
    driver_finish(self);
    if (err < 0 || outcome == NULL || !PyTuple_CheckExact(outcome) || PyTuple_GET_SIZE(outcome) != 2) {
        if (err == 0) {
            PyErr_SetString(PyExc_AssertionError, "a finished fiber has no outcome");
        }
        Py_XDECREF(outcome);
        return PYGEN_ERROR;
    }
    PyObject *value = Py_NewRef(PyTuple_GET_ITEM(outcome, 1));
    int failed = PyTuple_GET_ITEM(outcome, 0) == raised;
    Py_DECREF(outcome);
    if (!failed) {
        *result = value;
        return PYGEN_RETURN;
    }
    PyObject *tb = PyException_GetTraceback(value);
    if (tb != NULL) {
        PyObject *next = PyObject_GetAttrString(tb, "tb_next");
        Py_DECREF(tb);
        if (next == NULL) {
            Py_DECREF(value);
            return PYGEN_ERROR;
        }
        PyException_SetTraceback(value, next);
        Py_DECREF(next);
    }
    PyErr_SetObject((PyObject *)Py_TYPE(value), value);
    if (PyObject_TypeCheck(value, (PyTypeObject *)PyExc_StopIteration)) {
        /* PEP 479, as the generator driver: a StopIteration leaving it is a RuntimeError. */
        PyObject *stop = take_exception();
        PyErr_SetString(PyExc_RuntimeError, "generator raised StopIteration");
        PyObject *error = take_exception();
        if (error != NULL && stop != NULL) {
            PyException_SetCause(error, Py_NewRef(stop));
            PyException_SetContext(error, Py_NewRef(stop));
        }
        Py_XDECREF(stop);
        if (error != NULL) {
            PyErr_Restore(Py_NewRef(Py_TYPE(error)), error, PyException_GetTraceback(error));
        }
    }
    Py_DECREF(value);
    return PYGEN_ERROR;
}

/* One step of the driver, resumed with ``value`` (sent) or ``exc`` (thrown; not NULL). */
static PySendResult
driver_step(DriverObject *self, PyObject *value, PyObject *exc, PyObject **result)
{
    *result = NULL;
    switch (self->state) {
    case DRIVER_RUNNING:
        PyErr_SetString(PyExc_ValueError, "generator already executing");
        return PYGEN_ERROR;
    case DRIVER_DONE:
        if (exc != NULL) {
            raise_exception(exc);
            return PYGEN_ERROR;
        }
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    case DRIVER_FRESH:
        if (exc != NULL) {  /* thrown in before the first step: raised there, and done */
            driver_finish(self);
            raise_exception(exc);
            return PYGEN_ERROR;
        }
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started generator");
            return PYGEN_ERROR;
        }
        if (self->child != NULL) {
            /* The Task of a forked fiber (Switch._fork): under an eager task factory this first
               step runs inside fork(); then it only yields, and the fiber starts at the back of
               the ready queue, so that the documented fork order holds in every mode. */
            PyObject *child = self->child;
            self->child = NULL;
            PyObject *forking = PyObject_GetAttr(child, str_forking);
            Py_DECREF(child);
            int eager = forking == NULL ? -1 : PyObject_IsTrue(forking);
            Py_XDECREF(forking);
            if (eager < 0) {
                driver_finish(self);
                return PYGEN_ERROR;
            }
            if (eager) {
                *result = Py_NewRef(Py_None);
                return PYGEN_NEXT;
            }
        }
        break;
    }
    int fresh = self->state == DRIVER_FRESH;
    self->state = DRIVER_RUNNING;
    PyObject *fiber = self->fiber;  /* borrowed: self holds it until driver_finish */
    PyObject *out;
    if (fresh) {
        out = driver_start(self);
        fiber = self->fiber;
    }
    else if (self->sub != NULL) {
        /* Awaiting on the fiber's behalf (``yield from``): pass the step on. */
        PyObject *sub = self->sub, *got = NULL;
        PySendResult status;
        if (exc == NULL) {
            status = PyIter_Send(sub, value, &got);
        }
        else if (PyErr_GivenExceptionMatches(exc, PyExc_GeneratorExit)) {
            /* As ``yield from`` does: close the iterator, then raise at the yield. */
            PyObject *closed = NULL;
            PyObject *close = PyObject_GetAttr(sub, str_close);
            if (close != NULL) {
                closed = PyObject_CallNoArgs(close);
                Py_DECREF(close);
            }
            else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                closed = Py_NewRef(Py_None);
            }
            if (closed != NULL) {
                Py_DECREF(closed);
                raise_exception(exc);
            }
            status = PYGEN_ERROR;
        }
        else {
            status = throw_into(sub, exc, &got);
        }
        if (status == PYGEN_NEXT) {
            self->state = DRIVER_SUSPENDED;
            *result = got;
            return PYGEN_NEXT;
        }
        Py_CLEAR(self->sub);
        out = status == PYGEN_RETURN ? green_switch(fiber, got) : throw_raised(fiber);
        Py_XDECREF(got);
    }
    else if (driver_adopt(fiber) < 0) {
        out = NULL;
    }
    else if (exc != NULL) {  /* cancellation & co.: into the fiber */
        out = fiber_call(fiber, str_throw, exc);
    }
    else {
        PyObject **handover = (PyObject **)((char *)fiber + handover_offset);
        if (*handover == NULL || *handover == Py_None) {
            out = green_switch(fiber, value);
        }
        else {  /* what a direct waker got from the fiber for the driver (_pass_to_driver) */
            out = *handover;
            *handover = Py_NewRef(Py_None);
        }
    }
    for (;;) {
        if (out == NULL) {  /* switching or throwing failed: the driver is done, as in Python */
            driver_finish(self);
            return PYGEN_ERROR;
        }
        if (out == finished) {
            Py_DECREF(out);
            return driver_outcome(self, result);
        }
        int to_task = for_the_task(out);
        if (to_task < 0) {  /* outside the generator's try statements: it ends the driver */
            Py_DECREF(out);
            driver_finish(self);
            return PYGEN_ERROR;
        }
        if (to_task) {
            self->state = DRIVER_SUSPENDED;
            *result = out;
            return PYGEN_NEXT;
        }
        /* The foreign convention: an awaitable to await on the fiber's behalf. */
        PyObject *sub = PyObject_CallOneArg(await_iter, out);
        Py_DECREF(out);
        if (sub != NULL && !PyCoro_CheckExact(sub) && !PyGen_CheckExact(sub)) {
            Py_SETREF(sub, PyObject_GetIter(sub));  /* what ``yield from`` does with it */
        }
        if (sub == NULL) {
            out = throw_raised(fiber);
            continue;
        }
        PyObject *got = NULL;
        PySendResult status = PyIter_Send(sub, Py_None, &got);
        if (status == PYGEN_NEXT) {
            self->sub = sub;
            self->state = DRIVER_SUSPENDED;
            *result = got;
            return PYGEN_NEXT;
        }
        Py_DECREF(sub);
        out = status == PYGEN_RETURN ? green_switch(fiber, got) : throw_raised(fiber);
        Py_XDECREF(got);
    }
}

static PySendResult
driver_am_send(DriverObject *self, PyObject *value, PyObject **result)
{
    return driver_step(self, value, NULL, result);
}

/* What next() (``always`` 0) or send() and throw() (``always`` 1) return for a step: the value
   yielded, or NULL with StopIteration raised for a return -- which next() may leave unraised for
   a None result, as a generator's tp_iternext does. */
static PyObject *
driver_returned(PySendResult status, PyObject *result, int always)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result == Py_None && always) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else if (result != Py_None) {
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
driver_iternext(DriverObject *self)
{
    PyObject *result;
    PySendResult status = driver_step(self, Py_None, NULL, &result);
    return driver_returned(status, result, 0);
}

static PyObject *
driver_send(DriverObject *self, PyObject *value)
{
    PyObject *result;
    PySendResult status = driver_step(self, value, NULL, &result);
    return driver_returned(status, result, 1);
}

/* throw(exc) / throw(type[, value[, traceback]]): the exception to throw in, normalized. */
static PyObject *
thrown_exception(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected at least 1 argument, got %zd", nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
        PyObject *exc = take_exception();
        if (exc != NULL && tb != Py_None) {
            PyException_SetTraceback(exc, tb);
        }
        return exc;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        if (tb != Py_None) {
            PyException_SetTraceback(typ, tb);
        }
        return Py_NewRef(typ);
    }
    PyErr_Format(PyExc_TypeError,
                 "exceptions must be classes or instances deriving from BaseException, not %s",
                 Py_TYPE(typ)->tp_name);
    return NULL;
}

static PyObject *
driver_throw(DriverObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = thrown_exception(args, nargs);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *result;
    PySendResult status = driver_step(self, NULL, exc, &result);
    Py_DECREF(exc);
    return driver_returned(status, result, 1);
}

static PyObject *
driver_close(DriverObject *self, PyObject *unused)
{
    if (self->state == DRIVER_RUNNING) {
        PyErr_SetString(PyExc_ValueError, "generator already executing");
        return NULL;
    }
    if (self->state != DRIVER_SUSPENDED) {
        driver_finish(self);
        Py_RETURN_NONE;
    }
    PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exit == NULL) {
        return NULL;
    }
    PyObject *result;
    PySendResult status = driver_step(self, NULL, exit, &result);
    Py_DECREF(exit);
    if (status == PYGEN_NEXT) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "generator ignored GeneratorExit");
        return NULL;
    }
    if (status == PYGEN_RETURN) {
#if PY_VERSION_HEX >= 0x030D0000
        return result;  /* Python 3.13: close() returns what the generator returned */
#else
        Py_DECREF(result);
        Py_RETURN_NONE;
#endif
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) || PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

/* As a generator's: a driver collected while suspended is closed (GeneratorExit into the fiber). */
static void
driver_finalize(DriverObject *self)
{
    if (self->state != DRIVER_SUSPENDED) {
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *res = driver_close(self, NULL);
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    else {
        Py_DECREF(res);
    }
    PyErr_Restore(type, value, tb);
}

static int
driver_traverse(DriverObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->fiber);
    Py_VISIT(self->sub);
    Py_VISIT(self->child);
    Py_VISIT(self->label);
    return 0;
}

static int
driver_clear(DriverObject *self)
{
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->fiber);
    Py_CLEAR(self->sub);
    Py_CLEAR(self->child);
    Py_CLEAR(self->label);
    return 0;
}

static void
driver_dealloc(DriverObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    driver_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
driver_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *
driver_get_fiber(DriverObject *self, void *unused)
{
    return Py_NewRef(self->fiber ? self->fiber : Py_None);
}

static PyMethodDef driver_methods[] = {
    {"send", (PyCFunction)driver_send, METH_O, "send(value): as a generator's send"},
    {"throw", (PyCFunction)(void (*)(void))driver_throw, METH_FASTCALL,
     "throw(exc): as a generator's throw"},
    {"close", (PyCFunction)driver_close, METH_NOARGS, "close(): as a generator's close"},
    {NULL, NULL, 0, NULL},
};

/* The name of the function the fiber runs, which asyncio shows for a Task made of the driver
   (``coro=<name()>``) as it shows a coroutine's: its __qualname__ or __name__ (``which``), else
   its type's name. */
static PyObject *
driver_get_name(DriverObject *self, void *which)
{
    PyObject *name = PyObject_GetAttrString(self->label, (const char *)which);
    if (name == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        name = PyObject_GetAttrString(self->label, "__name__");
    }
    if (name == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        name = PyType_GetName(Py_TYPE(self->label));
    }
    return name;
}

static PyGetSetDef driver_getset[] = {
    {"fiber", (getter)driver_get_fiber, NULL,
     "The fiber it drives: None before the first step and once the call has finished.", NULL},
    {"__qualname__", (getter)driver_get_name, NULL, "The qualified name of the function run.",
     "__qualname__"},
    {"__name__", (getter)driver_get_name, NULL, "The name of the function run.", "__name__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods driver_as_async = {
    .am_await = driver_await,
    .am_send = (sendfunc)driver_am_send,
};

static PyTypeObject Driver_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenbridge._speedups.Driver",
    .tp_basicsize = sizeof(DriverObject),
    .tp_dealloc = (destructor)driver_dealloc,
    .tp_as_async = &driver_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The driver of one spawn_green call: _core._drive in C (see the comment above it "
              "in the source). Made by drive(fn, args, kwargs).",
    .tp_traverse = (traverseproc)driver_traverse,
    .tp_clear = (inquiry)driver_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)driver_iternext,
    .tp_methods = driver_methods,
    .tp_getset = driver_getset,
    .tp_finalize = (destructor)driver_finalize,
};

/* drive(fn, args, kwargs[, child]): a new driver; nothing runs until its first step. With
   ``child`` (Switch._fork's), it is a forked fiber's Task's coroutine itself, and its first step
   starts the fiber only when ``child.forking`` is false (see driver_step). */
static PyObject *
drive(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 3 || nargs > 4 || !PyTuple_Check(args[1]) || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "drive() takes (fn, a tuple, a dict[, child])");
        return NULL;
    }
    if (fiber_main == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call init_driver first");
        return NULL;
    }
    DriverObject *self = PyObject_GC_New(DriverObject, &Driver_Type);
    if (self == NULL) {
        return NULL;
    }
    self->fn = Py_NewRef(args[0]);
    self->args = Py_NewRef(args[1]);
    self->kwargs = Py_NewRef(args[2]);
    self->fiber = self->sub = NULL;
    self->child = nargs == 4 ? Py_NewRef(args[3]) : NULL;
    /* A forked fiber's call is Switch._run_child(switch, child, fn, args): name it by fn. */
    PyObject *label = args[0];
    if (nargs == 4 && PyTuple_GET_SIZE(args[1]) == 4) {
        label = PyTuple_GET_ITEM(args[1], 2);
    }
    self->label = Py_NewRef(label);
    self->state = DRIVER_FRESH;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
init_driver(PyObject *module, PyObject *args)
{
    PyObject *fiber, *current, *fin, *rai, *main, *local, *idle, *guard, *iter, *loop, *of;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO:init_driver", &fiber, &current, &fin, &rai, &main,
                          &local, &idle, &guard, &iter, &loop, &of)) {
        return NULL;
    }
    if (take_fiber_type(fiber, current) < 0
        || (call_offset = slot_offset(fiber, "_call")) < 0
        || (handover_offset = slot_offset(fiber, "_handover")) < 0
        || (outcome_offset = slot_offset(fiber, "_outcome")) < 0) {
        return NULL;
    }
    Py_XSETREF(finished, Py_NewRef(fin));
    Py_XSETREF(raised, Py_NewRef(rai));
    Py_XSETREF(local_state, Py_NewRef(local));
    Py_XSETREF(idle_fibers, Py_NewRef(idle));
    Py_XSETREF(guard_pool, Py_NewRef(guard));
    Py_XSETREF(await_iter, Py_NewRef(iter));
    Py_XSETREF(running_loop, Py_NewRef(loop));
    Py_XSETREF(task_of, Py_NewRef(of));
    Py_XSETREF(fiber_main, Py_NewRef(main));
    return PyObject_GetAttrString(module, "drive");
}

/* Called by PyInit__speedups. */
static int
driver_register(PyObject *module)
{
    str_idle = PyUnicode_InternFromString("idle");
    str_loop = PyUnicode_InternFromString("loop");
    str_gr_context = PyUnicode_InternFromString("gr_context");
    str_close = PyUnicode_InternFromString("close");
    str_forking = PyUnicode_InternFromString("forking");
    if (!str_idle || !str_loop || !str_gr_context || !str_close || !str_forking) {
        return -1;
    }
    return add_type(module, "Driver", &Driver_Type);
}

/* -- The receive buffer: _receive_buffer.ReceiveBuffer in C -- */

/* The same class as _receive_buffer.PyReceiveBuffer, with the same allocation policy and
 * invariants (see that module's memo); only the representation differs.
 *
 * Memory safety. The bytes live in a bytearray that is never resized, only replaced (as in
 * Python), and room() hands out memoryviews of it: a view keeps the bytearray alive, so memory a
 * transport still holds a view of (uvloop keeps a Py_buffer of the room until buffer_updated has
 * returned) is never freed or moved. Giving memory back or growing only drops this object's
 * references. Compaction moves bytes inside the same bytearray, as the Python version does.
 * ``filled`` accepts at most the length of the room last offered, and that offer is withdrawn
 * once reported or once the buffer empties, so ``end`` never passes the bytearray's end: every
 * copy out of ``buf`` stays inside it. */

#include <stddef.h>  /* offsetof */
#ifndef Py_T_PYSSIZET  /* Python 3.11 */
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_READONLY READONLY
#endif

#define RB_MIN_CAPACITY 4096  /* _receive_buffer.MIN_CAPACITY */

typedef struct {
    PyObject_HEAD
    PyObject *buf;         /* a bytearray, never resized, or NULL when nothing is allocated */
    PyObject *view;        /* memoryview(buf), or NULL with buf */
    Py_ssize_t size;       /* len(buf), 0 without one */
    Py_ssize_t start, end; /* the unread bytes: buf[start:end]; both 0 when empty */
    Py_ssize_t buffered;   /* end - start */
    Py_ssize_t capacity;   /* the size of the next allocation */
    Py_ssize_t limit;      /* max(limit, MIN_CAPACITY) */
    Py_ssize_t offered;    /* the length of the room last offered and not reported yet */
    int last_full;         /* the last receive filled all the room it was offered */
} ReceiveBufferObject;

#define RB_BYTES(self) PyByteArray_AS_STRING((self)->buf)

/* view[lo:hi], a new memoryview sharing view's buffer. */
static PyObject *
rb_slice(PyObject *view, Py_ssize_t lo, Py_ssize_t hi)
{
    PyObject *a = PyLong_FromSsize_t(lo);
    PyObject *b = a ? PyLong_FromSsize_t(hi) : NULL;
    PyObject *slice = b ? PySlice_New(a, b, NULL) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (slice == NULL) {
        return NULL;
    }
    PyObject *res = PyObject_GetItem(view, slice);
    Py_DECREF(slice);
    return res;
}

/* A zeroed bytearray of ``size`` bytes and its view, the first ``keep`` bytes copied from
   ``src``; they replace the current ones. */
static int
rb_replace(ReceiveBufferObject *self, Py_ssize_t size, const char *src, Py_ssize_t keep)
{
    PyObject *buf = PyByteArray_FromStringAndSize(NULL, size);
    if (buf == NULL) {
        return -1;
    }
    char *bytes = PyByteArray_AS_STRING(buf);
    if (keep > 0) {
        memcpy(bytes, src, keep);
    }
    memset(bytes + keep, 0, size - keep);  /* as bytearray(size): no stale heap in the room */
    PyObject *view = PyMemoryView_FromObject(buf);
    if (view == NULL) {
        Py_DECREF(buf);
        return -1;
    }
    Py_XSETREF(self->view, view);
    Py_XSETREF(self->buf, buf);
    self->size = size;
    return 0;
}

static void
rb_release(ReceiveBufferObject *self)
{
    Py_CLEAR(self->view);
    Py_CLEAR(self->buf);
    self->size = 0;
}

/* A usable buffer even when __init__ is skipped (``ReceiveBuffer.__new__``): as limit 0. */
static PyObject *
rb_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ReceiveBufferObject *self = (ReceiveBufferObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->limit = self->capacity = RB_MIN_CAPACITY;
    }
    return (PyObject *)self;
}

static int
rb_init(ReceiveBufferObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"limit", NULL};
    PyObject *arg;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:ReceiveBuffer", kwlist, &arg)) {
        return -1;
    }
    Py_ssize_t limit = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (limit == -1 && PyErr_Occurred()) {
        return -1;
    }
    rb_release(self);
    self->limit = Py_MAX(limit, RB_MIN_CAPACITY);
    self->start = self->end = self->buffered = 0;
    self->capacity = self->limit;
    self->offered = 0;
    self->last_full = 0;
    return 0;
}

static void
rb_dealloc(ReceiveBufferObject *self)
{
    rb_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
rb_length(ReceiveBufferObject *self)
{
    return self->buffered;
}

static PyObject *
rb_allocated(ReceiveBufferObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->size);
}

/* _make_room: grow, or move the unread bytes to the front. */
static int
rb_make_room(ReceiveBufferObject *self)
{
    Py_ssize_t start = self->start, size = self->size;
    Py_ssize_t unread = self->end - start;
    if (unread > size / 2 && (size < self->limit || unread == size)) {
        if (size > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t new_size = size < self->limit
            ? Py_MIN(Py_MAX(self->capacity, 2 * size), self->limit) : 2 * size;
        if (rb_replace(self, new_size, RB_BYTES(self) + start, unread) < 0) {
            return -1;
        }
    }
    else if (start > 0) {
        memmove(RB_BYTES(self), RB_BYTES(self) + start, unread);
    }
    self->start = 0;
    self->end = unread;
    return 0;
}

static PyObject *
rb_room(ReceiveBufferObject *self, PyObject *unused)
{
    Py_ssize_t end = self->end;
    PyObject *room;
    if (end == 0) {
        if (self->size != self->capacity && (self->size < self->capacity || !self->last_full)) {
            if (rb_replace(self, self->capacity, NULL, 0) < 0) {
                return NULL;
            }
        }
        room = Py_NewRef(self->view);
    }
    else {
        if (self->size - end < Py_MAX(self->size / 4, 1)) {
            if (rb_make_room(self) < 0) {
                return NULL;
            }
            end = self->end;
        }
        room = rb_slice(self->view, end, self->size);
        if (room == NULL) {
            return NULL;
        }
    }
    self->offered = self->size - end;
    return room;
}

static PyObject *
rb_filled(ReceiveBufferObject *self, PyObject *arg)
{
    Py_ssize_t nbytes = PyNumber_AsSsize_t(arg, NULL);  /* clamped: out of range below */
    if (nbytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t offered = self->offered;
    if (nbytes < 0 || nbytes > offered) {
        PyErr_Format(PyExc_ValueError,
                     "filled(%R): the transport can have written 0 to %zd bytes, the room "
                     "room() last offered and not reported yet", arg, offered);
        return NULL;
    }
    self->offered = 0;
    self->end += nbytes;
    self->buffered += nbytes;
    int full = self->last_full = nbytes >= offered;
    Py_ssize_t capacity = self->capacity;
    if (full) {
        if (capacity < self->limit) {
            self->capacity = Py_MIN(2 * capacity, self->limit);
        }
    }
    else if (nbytes < capacity / 4 && capacity > RB_MIN_CAPACITY) {
        self->capacity = capacity / 2;
    }
    Py_RETURN_NONE;
}

/* _consumed: the unread bytes now start at ``start``. */
static void
rb_consumed(ReceiveBufferObject *self, Py_ssize_t start)
{
    if (start < self->end) {
        self->start = start;
        self->buffered = self->end - start;
        return;
    }
    self->start = self->end = self->buffered = 0;
    self->offered = 0;  /* a room offered before points past the new end */
    if (self->size > RB_MIN_CAPACITY && !self->last_full) {
        rb_release(self);  /* the burst is over: give the memory back */
    }
}

/* read_into for what the fast path does not take: the Python version's steps, so that its
   errors are raised (read-only, other formats, not a buffer) and strided views are written. */
static PyObject *
rb_read_into_slow(ReceiveBufferObject *self, PyObject *out)
{
    PyObject *view = Py_IS_TYPE(out, &PyMemoryView_Type) ? Py_NewRef(out)
                                                         : PyMemoryView_FromObject(out);
    if (view == NULL) {
        return NULL;
    }
    Py_ssize_t len = PyObject_Length(view);
    if (len < 0) {
        Py_DECREF(view);
        return NULL;
    }
    Py_ssize_t start = self->start;
    Py_ssize_t n = Py_MIN(len, self->end - start);
    PyObject *src = self->view != NULL ? rb_slice(self->view, start, start + n)
                                       : PyMemoryView_FromMemory((char *)"", 0, PyBUF_READ);
    PyObject *stop = src != NULL ? PyLong_FromSsize_t(n) : NULL;
    PyObject *slice = stop != NULL ? PySlice_New(Py_None, stop, NULL) : NULL;
    int rc = slice != NULL ? PyObject_SetItem(view, slice, src) : -1;
    Py_XDECREF(slice);
    Py_XDECREF(stop);
    Py_XDECREF(src);
    if (rc == 0) {
        rb_consumed(self, start + n);
    }
    Py_DECREF(view);  /* last: a Python exporter's __release_buffer__ may use self */
    return rc == 0 ? PyLong_FromSsize_t(n) : NULL;
}

static PyObject *
rb_read_into(ReceiveBufferObject *self, PyObject *out)
{
    Py_buffer b;
    if (PyObject_GetBuffer(out, &b, PyBUF_FULL_RO) < 0) {
        PyErr_Clear();  /* the slow path raises the Python version's error */
        return rb_read_into_slow(self, out);
    }
    if (b.readonly || b.ndim != 1 || b.itemsize != 1
        || (b.format != NULL && strcmp(b.format, "B") != 0 && strcmp(b.format, "@B") != 0)
        || !PyBuffer_IsContiguous(&b, 'C')) {
        PyBuffer_Release(&b);
        return rb_read_into_slow(self, out);
    }
    /* Read the indices only now: a Python exporter's __buffer__ may have run. */
    Py_ssize_t start = self->start;
    Py_ssize_t n = Py_MIN(b.len, self->end - start);
    if (n > 0) {
        memmove(b.buf, RB_BYTES(self) + start, n);  /* ``out`` may be a view of this buffer */
    }
    rb_consumed(self, start + n);
    PyBuffer_Release(&b);  /* last: a Python exporter's __release_buffer__ may use self */
    return PyLong_FromSsize_t(n);
}

/* take() of a count already checked to be >= 0. */
static PyObject *
rb_take_n(ReceiveBufferObject *self, Py_ssize_t n)
{
    Py_ssize_t start = self->start;
    n = Py_MIN(n, self->end - start);
    PyObject *data = PyBytes_FromStringAndSize(n > 0 ? RB_BYTES(self) + start : "", n);
    if (data == NULL) {
        return NULL;
    }
    rb_consumed(self, start + n);
    return data;
}

static PyObject *
rb_take(ReceiveBufferObject *self, PyObject *arg)
{
    Py_ssize_t n = PyNumber_AsSsize_t(arg, NULL);  /* clamped: bytes beyond what is buffered */
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "take(%R): the number of bytes cannot be negative", arg);
        return NULL;
    }
    return rb_take_n(self, n);
}

static PyObject *
rb_clear(ReceiveBufferObject *self, PyObject *unused)
{
    rb_consumed(self, self->end);
    Py_RETURN_NONE;
}

static PyMethodDef rb_methods[] = {
    {"room", (PyCFunction)rb_room, METH_NOARGS,
     "room($self, /)\n--\n\n"
     "Memory for the transport to receive into (``BufferedProtocol.get_buffer``)."},
    {"filled", (PyCFunction)rb_filled, METH_O,
     "filled($self, nbytes, /)\n--\n\n"
     "The transport wrote ``nbytes`` into the last ``room()`` (``buffer_updated``)."},
    {"read_into", (PyCFunction)rb_read_into, METH_O,
     "read_into($self, out, /)\n--\n\n"
     "Move up to ``len(out)`` buffered bytes into ``out``; return how many."},
    {"take", (PyCFunction)rb_take, METH_O,
     "take($self, n, /)\n--\n\n"
     "Up to ``n`` buffered bytes, removed from the buffer."},
    {"clear", (PyCFunction)rb_clear, METH_NOARGS,
     "clear($self, /)\n--\n\n"
     "Drop every buffered byte (``shutdown(\"receive\")``); the memory goes as after a read that "
     "empties the buffer."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rb_members[] = {
    {"buffered", Py_T_PYSSIZET, offsetof(ReceiveBufferObject, buffered), Py_READONLY,
     "How many bytes are buffered (as len())."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef rb_getset[] = {
    {"allocated", (getter)rb_allocated, NULL,
     "The bytes of memory the buffer holds right now (for tests and diagnostics).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods rb_as_sequence = {
    .sq_length = (lenfunc)rb_length,
};

static PyTypeObject ReceiveBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenbridge._speedups.ReceiveBuffer",
    .tp_basicsize = sizeof(ReceiveBufferObject),
    .tp_dealloc = (destructor)rb_dealloc,
    .tp_as_sequence = &rb_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ReceiveBuffer(limit)\n--\n\n"
              "Bytes received and not read yet; see greenbridge._receive_buffer's memo (this is "
              "its C version).",
    .tp_methods = rb_methods,
    .tp_members = rb_members,
    .tp_getset = rb_getset,
    .tp_init = (initproc)rb_init,
    .tp_new = rb_new,
};

/* Called by PyInit__speedups. */
static int
receive_buffer_register(PyObject *module)
{
    return add_type(module, "ReceiveBuffer", &ReceiveBuffer_Type);
}

/* -- Waiter and WakeBatch: _waiter.Waiter and _wake_batch.WakeBatch in C ----------------------
 *
 * The same state machine as the Python classes, step for step and in the same order (read
 * _waiter's memo: ``wake`` may run the woken fiber before it returns; a value is refused when
 * the fiber's Task is being cancelled, and one accepted just before that is taken back). A wait
 * and a wake-up each cost one of these calls instead of two or three Python frames; ``wait``
 * parks through ``park`` and ``wake`` resumes through ``resume`` above, without a Python call
 * in between. The rare paths stay Python: a wait in another library's green context
 * (``_waiter._foreign_future`` and await_from_green), the cross-thread check
 * (``_control._check_waker_thread``).
 *
 * Being C, a Waiter's steps cannot be interrupted by a KeyboardInterrupt between two of them,
 * which the Python version needs _control._ki_protected for; the fiber's code that ``resume``
 * runs is Python again, and protected as before.
 *
 * The fields hold None rather than NULL, as the Python slots do after __init__; ``_state`` is
 * writable (tests put a waiter in a state by hand), the others read-only. */

#ifndef Py_T_INT  /* Python 3.11 */
#define Py_T_INT T_INT
#endif

enum { W_PENDING, W_WOKEN, W_FAILED, W_CANCELLED, W_TAKEN_BACK };  /* _waiter's states */

static PyObject *foreign_future;      /* _waiter._foreign_future: raises outside green code */
static PyObject *waiter_await;        /* _core.await_from_green */
static PyObject *check_waker_thread;  /* _control._check_waker_thread */
static PyObject *cancelled_error;     /* asyncio.CancelledError */
static PyObject *str_wake, *str_flush, *str_call_soon, *str_value_kw, *str_exc_kw;

typedef struct {
    PyObject_HEAD
    PyObject *fiber;   /* the fiber parked in wait(), else None */
    PyObject *future;  /* the Future a foreign wait awaits, else None */
    PyObject *value;   /* the value or the exception (woken, failed, taken back), else None */
    int state;
} WaiterObject;

static PyTypeObject Waiter_Type;

/* 0 once init_control and init_waiter have run, else -1 with RuntimeError. */
static int
waiter_ready(void)
{
    if (parked == NULL || foreign_future == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "greenbridge._speedups: init_control and init_waiter were not called");
        return -1;
    }
    return 0;
}

static PyObject *
waiter_alloc(PyTypeObject *type)
{
    WaiterObject *self = PyObject_GC_New(WaiterObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->fiber = Py_NewRef(Py_None);
    self->future = Py_NewRef(Py_None);
    self->value = Py_NewRef(Py_None);
    self->state = W_PENDING;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* Waiter(): the call takes no argument, as the Python __init__. */
static PyObject *
waiter_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_Format(PyExc_TypeError, "Waiter() takes no arguments (%zd given)",
                     nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0));
        return NULL;
    }
    return waiter_alloc((PyTypeObject *)type);
}

static PyObject *
waiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Waiter() takes no arguments");
        return NULL;
    }
    return waiter_alloc(type);
}

static int
waiter_traverse(WaiterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fiber);
    Py_VISIT(self->future);
    Py_VISIT(self->value);
    return 0;
}

static int
waiter_clear(WaiterObject *self)
{
    Py_CLEAR(self->fiber);
    Py_CLEAR(self->future);
    Py_CLEAR(self->value);
    return 0;
}

static void
waiter_dealloc(WaiterObject *self)
{
    PyObject_GC_UnTrack(self);
    waiter_clear(self);
    PyObject_GC_Del(self);
}

/* Replace a field (a new reference to ``value``); the old one is dropped last. */
static void
waiter_set(PyObject **field, PyObject *value)
{
    Py_SETREF(*field, Py_NewRef(value));
}

/* _outcome: the value, or NULL with the error raised. */
static PyObject *
waiter_outcome(WaiterObject *self)
{
    switch (self->state) {
    case W_WOKEN:
        return Py_NewRef(self->value);
    case W_FAILED: {
        /* ``raise self._value``: an instance as it is, a class instantiated, else TypeError. */
        PyObject *exc = self->value;
        if (PyExceptionInstance_Check(exc)) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        }
        else if (PyExceptionClass_Check(exc)) {
            PyObject *made = PyObject_CallNoArgs(exc);
            if (made == NULL) {
                return NULL;
            }
            if (PyExceptionInstance_Check(made)) {
                PyErr_SetObject((PyObject *)Py_TYPE(made), made);
            }
            else {
                PyErr_Format(PyExc_TypeError,
                             "calling %R should have returned an instance of BaseException, not "
                             "%.100s", exc, Py_TYPE(made)->tp_name);
            }
            Py_DECREF(made);
        }
        else {
            PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
        }
        return NULL;
    }
    case W_CANCELLED:
        PyErr_SetString(cancelled_error, "the wait was cancelled");
        return NULL;
    default:
        PyErr_SetString(PyExc_RuntimeError,
                        "Waiter.wait() was called again after it was interrupted");
        return NULL;
    }
}

/* The wait ended in an exception (cancellation, an interrupt): a value accepted meanwhile is
   kept for take_back. The exception stays set. */
static void
waiter_interrupted(WaiterObject *self)
{
    self->state = self->state == W_WOKEN ? W_TAKEN_BACK : W_CANCELLED;
}

/* _wait_foreign: another library's green context, where the fiber cannot be parked. */
static PyObject *
waiter_wait_foreign(WaiterObject *self)
{
    PyObject *future = PyObject_CallNoArgs(foreign_future);  /* raises NoGreenContext */
    if (future == NULL) {
        return NULL;
    }
    waiter_set(&self->future, future);
    PyObject *res = PyObject_CallOneArg(waiter_await, future);
    Py_DECREF(future);
    if (res == NULL) {
        waiter_interrupted(self);
        return NULL;
    }
    Py_DECREF(res);
    return waiter_outcome(self);
}

static PyObject *
waiter_wait(WaiterObject *self, PyObject *unused)
{
    if (self->state == W_PENDING) {
        if (waiter_ready() < 0) {
            return NULL;
        }
        PyObject *fiber = current_greenlet();
        if (fiber == NULL) {
            return NULL;
        }
        if (self->fiber != Py_None || self->future != Py_None) {
            Py_DECREF(fiber);
            PyErr_SetString(PyExc_RuntimeError, "Waiter.wait() was called twice");
            return NULL;
        }
        if ((PyObject *)Py_TYPE(fiber) != fiber_type) {
            Py_DECREF(fiber);
            return waiter_wait_foreign(self);
        }
        waiter_set(&self->fiber, fiber);
        while (self->state == W_PENDING) {
            PyObject *r = park_fiber(fiber);
            if (r == NULL) {
                waiter_interrupted(self);
                break;
            }
            Py_DECREF(r);
        }
        Py_DECREF(fiber);
        /* The ``finally``: keep a raised exception across dropping the field's reference. */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        waiter_set(&self->fiber, Py_None);
        if (type != NULL) {
            PyErr_Restore(type, exc, tb);
            return NULL;
        }
    }
    return waiter_outcome(self);
}

/* ``getcurrent() is not fiber.parent``: 1 when so, 0 when not, -1 on error. */
static int
not_from_parent(PyObject *fiber)
{
    PyObject *current = current_greenlet();
    if (current == NULL) {
        return -1;
    }
    PyObject *parent = greenlet_parent(fiber);
    Py_DECREF(current);  /* only its identity is compared: it is running */
    if (parent == NULL) {
        return -1;
    }
    Py_DECREF(parent);  /* the fiber holds it */
    return current != parent;
}

static int fibers_check_waker_thread(PyObject *fiber);  /* Fibers' bookkeeping */

/* check_waker_thread(fiber) when the caller is not the fiber's parent; -1 when it raised. */
static int
waiter_check_thread(PyObject *fiber)
{
    int other = not_from_parent(fiber);
    if (other <= 0) {
        return other;
    }
    return fibers_check_waker_thread(fiber);
}

/* _settle: 1 when the outcome was accepted, 0 when refused, -1 on error. */
static int
waiter_settle(WaiterObject *self, int state, PyObject *value)
{
    if (self->state != W_PENDING) {
        return 0;
    }
    if (waiter_ready() < 0) {
        return -1;
    }
    if (self->fiber != Py_None) {
        PyObject *fiber = Py_NewRef(self->fiber);  /* wait() drops the field when it resumes */
        if (waiter_check_thread(fiber) < 0) {
            Py_DECREF(fiber);
            return -1;
        }
        self->state = state;
        waiter_set(&self->value, value);
        PyObject *r = resume(NULL, fiber);  /* may run the fiber before returning */
        Py_DECREF(fiber);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
        if (r == Py_False) {  /* its Task is being cancelled: refuse the value */
            self->state = W_PENDING;
            waiter_set(&self->value, Py_None);
            return 0;
        }
        return 1;
    }
    if (self->future != Py_None) {
        PyObject *future = Py_NewRef(self->future);
        int done = future_done(future);
        if (done != 0) {
            Py_DECREF(future);
            return done < 0 ? -1 : 0;
        }
        PyObject *r = PyObject_CallMethodOneArg(future, str_set_result, Py_None);
        Py_DECREF(future);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    self->state = state;
    waiter_set(&self->value, value);
    return 1;
}

static PyObject *
settled(int res)
{
    if (res < 0) {
        return NULL;
    }
    return Py_NewRef(res ? Py_True : Py_False);
}

/* One argument ``name`` of ``method``, positional or by keyword, as a Python method takes it:
   *out is borrowed (``fallback`` when absent and not required, NULL when required); -1 with
   the TypeError Python raises for a bad call. */
static int
one_argument(const char *method, PyObject *name, PyObject *fallback, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 1) {
        if (fallback != NULL) {
            PyErr_Format(PyExc_TypeError, "Waiter.%s() takes from 1 to 2 positional arguments "
                         "but %zd were given", method, nargs + 1);
        }
        else {
            PyErr_Format(PyExc_TypeError, "Waiter.%s() takes 2 positional arguments but %zd "
                         "were given", method, nargs + 1);
        }
        return -1;
    }
    *out = nargs == 1 ? args[0] : NULL;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int same = key == name ? 1 : PyUnicode_Compare(key, name) == 0;
        if (!same) {
            PyErr_Format(PyExc_TypeError, "Waiter.%s() got an unexpected keyword argument '%U'",
                         method, key);
            return -1;
        }
        if (*out != NULL) {
            PyErr_Format(PyExc_TypeError, "Waiter.%s() got multiple values for argument '%U'",
                         method, name);
            return -1;
        }
        *out = args[nargs + i];
    }
    if (*out == NULL) {
        if (fallback == NULL) {
            PyErr_Format(PyExc_TypeError, "Waiter.%s() missing 1 required positional argument: "
                         "'%U'", method, name);
            return -1;
        }
        *out = fallback;
    }
    return 0;
}

static PyObject *
waiter_wake(WaiterObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = Py_None;
    if ((nargs != 0 || kwnames != NULL)
        && one_argument("wake", str_value_kw, Py_None, args, nargs, kwnames, &value) < 0) {
        return NULL;
    }
    return settled(waiter_settle(self, W_WOKEN, value));
}

static PyObject *
waiter_fail(WaiterObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *exc;
    if (one_argument("fail", str_exc_kw, NULL, args, nargs, kwnames, &exc) < 0) {
        return NULL;
    }
    return settled(waiter_settle(self, W_FAILED, exc));
}

static PyObject *
waiter_cancel(WaiterObject *self, PyObject *unused)
{
    return settled(waiter_settle(self, W_CANCELLED, Py_None));
}

static PyObject *
waiter_done(WaiterObject *self, PyObject *unused)
{
    return Py_NewRef(self->state != W_PENDING ? Py_True : Py_False);
}

static PyObject *
waiter_take_back(WaiterObject *self, PyObject *unused)
{
    if (self->state == W_TAKEN_BACK) {
        PyObject *value = self->value;  /* the reference moves into the tuple */
        self->value = Py_NewRef(Py_None);
        self->state = W_CANCELLED;
        PyObject *res = PyTuple_Pack(2, Py_True, value);
        Py_DECREF(value);
        return res;
    }
    return PyTuple_Pack(2, Py_False, Py_None);
}

static PyObject *
waiter_check_waker(WaiterObject *self, PyObject *unused)
{
    if (self->fiber != Py_None) {
        if (waiter_ready() < 0) {
            return NULL;
        }
        PyObject *fiber = Py_NewRef(self->fiber);
        int rc = waiter_check_thread(fiber);
        Py_DECREF(fiber);
        if (rc < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef waiter_methods[] = {
    {"wait", (PyCFunction)waiter_wait, METH_NOARGS,
     "wait($self, /)\n--\n\n"
     "Suspend the calling fiber until ``wake``/``fail``; return the value or raise the error.\n"
     "\n"
     "Returns at once when already woken. A suspension point: cancelling the fiber raises\n"
     "``CancelledError`` here (then see ``take_back``); after ``cancel()`` it raises\n"
     "``CancelledError`` too. Raises ``NoGreenContext`` outside green code and ``RuntimeError``\n"
     "when called a second time."},
    {"check_waker", (PyCFunction)waiter_check_waker, METH_NOARGS,
     "check_waker($self, /)\n--\n\n"
     "Raise ``RuntimeError`` now, changing nothing, when a ``wake`` from the caller would\n"
     "come from another thread than the waiting fiber's loop (see ``_check_waker_thread``)."},
    {"wake", (PyCFunction)(void (*)(void))waiter_wake, METH_FASTCALL | METH_KEYWORDS,
     "wake($self, /, value=None)\n--\n\n"
     "Resume the waiting fiber with ``value`` -- possibly running it before returning.\n"
     "\n"
     "False when already woken, failed or cancelled, or when the fiber is being cancelled: the\n"
     "caller keeps ``value``. Never suspends."},
    {"fail", (PyCFunction)(void (*)(void))waiter_fail, METH_FASTCALL | METH_KEYWORDS,
     "fail($self, /, exc)\n--\n\n"
     "Resume the waiting fiber by raising ``exc`` in it; False as for ``wake``."},
    {"done", (PyCFunction)waiter_done, METH_NOARGS,
     "done($self, /)\n--\n\n"
     "True once woken, failed or cancelled."},
    {"cancel", (PyCFunction)waiter_cancel, METH_NOARGS,
     "cancel($self, /)\n--\n\n"
     "Cancel the wait from outside: ``wait()`` raises ``CancelledError``. False when the\n"
     "waiter was already woken, failed or cancelled."},
    {"take_back", (PyCFunction)waiter_take_back, METH_NOARGS,
     "take_back($self, /)\n--\n\n"
     "After ``wait()`` raised ``CancelledError``: ``(True, value)`` when a value had been\n"
     "accepted by ``wake`` anyway (put it back), else ``(False, None)``."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef waiter_members[] = {
    {"_fiber", Py_T_OBJECT_EX, offsetof(WaiterObject, fiber), Py_READONLY, NULL},
    {"_future", Py_T_OBJECT_EX, offsetof(WaiterObject, future), Py_READONLY, NULL},
    {"_value", Py_T_OBJECT_EX, offsetof(WaiterObject, value), Py_READONLY, NULL},
    {"_state", Py_T_INT, offsetof(WaiterObject, state), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject Waiter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenbridge._speedups.Waiter",
    .tp_basicsize = sizeof(WaiterObject),
    .tp_dealloc = (destructor)waiter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Waiter()\n--\n\n"
              "A one-shot wake-up for the green fiber that calls ``wait()``. See the module "
              "docstring.",
    .tp_traverse = (traverseproc)waiter_traverse,
    .tp_clear = (inquiry)waiter_clear,
    .tp_methods = waiter_methods,
    .tp_members = waiter_members,
    .tp_new = waiter_new,
    .tp_vectorcall = waiter_vectorcall,
};

/* WakeBatch: _wake_batch.WakeBatch (see that module's memo). A Waiter of the C type is woken
   without a method call; anything else through its ``wake``. */
typedef struct {
    PyObject_HEAD
    PyObject *waiters;  /* a list */
    char scheduled;     /* a flush is scheduled with the loop, and then waiters is not empty */
} WakeBatchObject;

static PyObject *
wb_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "WakeBatch() takes no arguments");
        return NULL;
    }
    WakeBatchObject *self = PyObject_GC_New(WakeBatchObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->scheduled = 0;
    self->waiters = PyList_New(0);
    if (self->waiters == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
wb_traverse(WakeBatchObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->waiters);
    return 0;
}

static int
wb_clear(WakeBatchObject *self)
{
    Py_CLEAR(self->waiters);
    return 0;
}

static void
wb_dealloc(WakeBatchObject *self)
{
    PyObject_GC_UnTrack(self);
    wb_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
wb_add(WakeBatchObject *self, PyObject *waiter)
{
    if (self->waiters == NULL || get_running_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenbridge._speedups: init_control was not called");
        return NULL;
    }
    if (PyList_Append(self->waiters, waiter) < 0) {
        return NULL;
    }
    if (!self->scheduled) {
        self->scheduled = 1;
        PyObject *loop = PyObject_CallNoArgs(get_running_loop);
        if (loop == NULL) {
            return NULL;
        }
        PyObject *flush = PyObject_GetAttr((PyObject *)self, str_flush);
        if (flush == NULL) {
            Py_DECREF(loop);
            return NULL;
        }
        PyObject *r = PyObject_CallMethodOneArg(loop, str_call_soon, flush);
        Py_DECREF(flush);
        Py_DECREF(loop);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
wb_flush(WakeBatchObject *self, PyObject *unused)
{
    if (self->waiters == NULL) {
        Py_RETURN_NONE;  /* cleared by the garbage collector */
    }
    self->scheduled = 0;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) {
        return NULL;
    }
    PyObject *waiters = self->waiters;  /* the batch's reference moves here */
    self->waiters = fresh;
    /* The list is ours alone now: a waker that adds to the batch adds to ``fresh``. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(waiters); i++) {
        PyObject *waiter = PyList_GET_ITEM(waiters, i);
        PyObject *r;
        if (Py_IS_TYPE(waiter, &Waiter_Type)) {
            r = settled(waiter_settle((WaiterObject *)waiter, W_WOKEN, Py_None));
        }
        else {
            r = call_method0(waiter, str_wake);
        }
        if (r == NULL) {
            Py_DECREF(waiters);
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_DECREF(waiters);
    Py_RETURN_NONE;
}

static PyObject *
wb_get_waiters(WakeBatchObject *self, void *closure)
{
    if (self->waiters == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(self->waiters);
}

static PyObject *
wb_get_scheduled(WakeBatchObject *self, void *closure)
{
    return Py_NewRef(self->scheduled ? Py_True : Py_False);
}

static PyMethodDef wb_methods[] = {
    {"add", (PyCFunction)wb_add, METH_O,
     "add($self, waiter, /)\n--\n\n"
     "Wake ``waiter`` at the loop's next run of its ready callbacks. Called on the loop."},
    {"_flush", (PyCFunction)wb_flush, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef wb_getset[] = {
    {"_waiters", (getter)wb_get_waiters, NULL, NULL, NULL},
    {"_scheduled", (getter)wb_get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WakeBatch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenbridge._speedups.WakeBatch",
    .tp_basicsize = sizeof(WakeBatchObject),
    .tp_dealloc = (destructor)wb_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "WakeBatch()\n--\n\n"
              "Waiters woken by the transport callbacks of one loop, resumed together, in order, "
              "from one\nloop callback of their own: see the module memo.",
    .tp_traverse = (traverseproc)wb_traverse,
    .tp_clear = (inquiry)wb_clear,
    .tp_methods = wb_methods,
    .tp_getset = wb_getset,
    .tp_new = wb_new,
};

/* init_waiter(foreign_future, await_from_green, check_waker_thread, CancelledError) ->
   (Waiter, WakeBatch): the helpers the rare paths call. After init_control. */
static PyObject *
init_waiter(PyObject *module, PyObject *args)
{
    PyObject *foreign, *await, *check, *cancelled;
    if (!PyArg_ParseTuple(args, "OOOO:init_waiter", &foreign, &await, &check, &cancelled)) {
        return NULL;
    }
    if (parked == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init_waiter: call init_control first");
        return NULL;
    }
    Py_XSETREF(foreign_future, Py_NewRef(foreign));
    Py_XSETREF(waiter_await, Py_NewRef(await));
    Py_XSETREF(check_waker_thread, Py_NewRef(check));
    Py_XSETREF(cancelled_error, Py_NewRef(cancelled));
    return PyTuple_Pack(2, (PyObject *)&Waiter_Type, (PyObject *)&WakeBatch_Type);
}

/* Called by PyInit__speedups. */
static int
waiter_register(PyObject *module)
{
    str_wake = PyUnicode_InternFromString("wake");
    str_flush = PyUnicode_InternFromString("_flush");
    str_call_soon = PyUnicode_InternFromString("call_soon");
    str_value_kw = PyUnicode_InternFromString("value");
    str_exc_kw = PyUnicode_InternFromString("exc");
    if (!str_wake || !str_flush || !str_call_soon || !str_value_kw || !str_exc_kw) {
        return -1;
    }
    if (add_type(module, "Waiter", &Waiter_Type) < 0) {
        return -1;
    }
    return add_type(module, "WakeBatch", &WakeBatch_Type);
}

/* -- Connections: the hot paths of _protocol in C -----------------------------------------------
 *
 * ``ConnProtocol`` is the base of _protocol._ConnProtocol: it holds the protocol's state in C
 * fields, under the attribute names the Python methods use (so the cold paths stay Python and
 * read and write them as before), and has the five methods every round trip calls:
 * ``get_buffer``, ``buffer_updated``, ``take``, ``read_into`` and ``wait_for_input``.
 * init_connection makes Connection's ``read``, ``read_into`` and ``write`` of the three functions
 * below (method descriptors of the Connection class, with the Python methods' docstrings). They
 * do the Python methods' steps, in the same order, for the common case -- a count that is a
 * positive int, a protocol of this type -- and hand every other case to the Python method,
 * which stays: ``n <= 0``, an empty buffer to read into, a write after ``shutdown("send")``,
 * and the wait for a drained send buffer after a write (``_wait_drained``).
 *
 * Being C, these steps cannot be interrupted between two of them; the Python calls they make
 * (the loop's ``time`` and ``call_at``, the transport's ``write`` and ``is_closing``, a park)
 * can raise, and every such exit leaves the state as the Python ``finally`` clauses do: no
 * reader left registered, no reading slot left busy. */

#ifndef Py_T_BOOL  /* Python 3.11 */
#define Py_T_BOOL T_BOOL
#define Py_T_DOUBLE T_DOUBLE
#endif

typedef struct {
    PyObject_HEAD
    PyObject *transport, *loop, *wakeups, *rx, *reader, *read_timeout, *timer, *drainer, *error;
    double reader_since, timer_at;
    char read_paused, eof, drop_input, write_paused, lost, keep_open_on_eof;
} ConnProtocolObject;

static PyTypeObject ConnProtocol_Type;
static PyObject *closed_error;      /* _errors.ClosedResourceError */
static PyObject *connection_error;  /* _protocol._connection_error */
static PyObject *conn_py_read, *conn_py_read_into, *conn_py_write;  /* the Python methods */
static PyObject *conn_docs;         /* keeps the three docstrings' UTF-8 alive */
static Py_ssize_t conn_rx_limit = -1;  /* _protocol.RECEIVE_BUFFER_SIZE */
static Py_ssize_t conn_chunk;          /* _flow.DEFAULT_CHUNK */
static PyObject *str_room, *str_filled, *str_take, *str_read_into, *str_clear, *str_buffered,
    *str_pause_reading, *str_maybe_resume, *str_time, *str_call_at, *str_cancel, *str_add,
    *str_check_timeout, *str__closed, *str__protocol, *str__reading, *str__writing,
    *str__read_timeout, *str__send_closed, *str__transport, *str_busy, *str_acquire,
    *str_is_closing, *str_write, *str_broken, *str_wait_drained;

#define CP_OBJECT(name, field) \
    {name, Py_T_OBJECT_EX, offsetof(ConnProtocolObject, field), 0, NULL}
#define CP_FLAG(name, field) \
    {name, Py_T_BOOL, offsetof(ConnProtocolObject, field), 0, NULL}

static PyMemberDef cp_members[] = {
    CP_OBJECT("_transport", transport),
    CP_OBJECT("_loop", loop),
    CP_OBJECT("_wakeups", wakeups),
    CP_OBJECT("_rx", rx),
    CP_OBJECT("_reader", reader),
    CP_OBJECT("_read_timeout", read_timeout),
    CP_OBJECT("_timer", timer),
    CP_OBJECT("_drainer", drainer),
    CP_OBJECT("_error", error),
    {"_reader_since", Py_T_DOUBLE, offsetof(ConnProtocolObject, reader_since), 0, NULL},
    {"_timer_at", Py_T_DOUBLE, offsetof(ConnProtocolObject, timer_at), 0, NULL},
    CP_FLAG("_read_paused", read_paused),
    CP_FLAG("_eof", eof),
    CP_FLAG("_drop_input", drop_input),
    CP_FLAG("_write_paused", write_paused),
    CP_FLAG("_lost", lost),
    CP_FLAG("_keep_open_on_eof", keep_open_on_eof),
    {NULL, 0, 0, 0, NULL},
};


static PyObject *
cp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ConnProtocolObject *self = (ConnProtocolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    PyObject **fields[] = {&self->transport, &self->loop, &self->wakeups, &self->rx,
                           &self->reader, &self->read_timeout, &self->timer, &self->drainer,
                           &self->error};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        *fields[i] = Py_NewRef(Py_None);
    }
    return (PyObject *)self;
}

static int
cp_traverse(ConnProtocolObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transport);
    Py_VISIT(self->loop);
    Py_VISIT(self->wakeups);
    Py_VISIT(self->rx);
    Py_VISIT(self->reader);
    Py_VISIT(self->read_timeout);
    Py_VISIT(self->timer);
    Py_VISIT(self->drainer);
    Py_VISIT(self->error);
    return 0;
}

static int
cp_clear(ConnProtocolObject *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->wakeups);
    Py_CLEAR(self->rx);
    Py_CLEAR(self->reader);
    Py_CLEAR(self->read_timeout);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->drainer);
    Py_CLEAR(self->error);
    return 0;
}

/* A Python subclass's instances own a reference to their class: subtype_dealloc drops it. */
static void
cp_dealloc(ConnProtocolObject *self)
{
    PyObject_GC_UnTrack(self);
    cp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The fields cannot be deleted (the C paths read them without a NULL test); assigning goes as
   for any attribute. */
static int
cp_setattro(PyObject *self, PyObject *name, PyObject *value)
{
    if (value == NULL && PyUnicode_Check(name)) {
        for (PyMemberDef *m = cp_members; m->name != NULL; m++) {
            if (m->type == Py_T_OBJECT_EX && PyUnicode_CompareWithASCIIString(name, m->name) == 0) {
                PyErr_Format(PyExc_AttributeError, "cannot delete the field %U of a connection's "
                             "protocol", name);
                return -1;
            }
        }
    }
    return PyObject_GenericSetAttr(self, name, value);
}

/* The buffer's unread byte count, or -1 with an error. */
static Py_ssize_t
cp_buffered(PyObject *rx)
{
    if (Py_IS_TYPE(rx, &ReceiveBuffer_Type)) {
        return ((ReceiveBufferObject *)rx)->buffered;
    }
    PyObject *n = PyObject_GetAttr(rx, str_buffered);
    if (n == NULL) {
        return -1;
    }
    Py_ssize_t res = PyNumber_AsSsize_t(n, PyExc_OverflowError);
    Py_DECREF(n);
    return res;
}

/* Hand a reader or drainer taken from its field (a reference moves in) to the wake batch. */
static int
cp_batch(ConnProtocolObject *self, PyObject *waiter)
{
    PyObject *wakeups = Py_NewRef(self->wakeups);
    PyObject *r = Py_IS_TYPE(wakeups, &WakeBatch_Type)
        ? wb_add((WakeBatchObject *)wakeups, waiter)
        : PyObject_CallMethodOneArg(wakeups, str_add, waiter);
    Py_DECREF(wakeups);
    Py_DECREF(waiter);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyObject *
cp_get_buffer(ConnProtocolObject *self, PyObject *sizehint)
{
    PyObject *rx = Py_NewRef(self->rx);
    PyObject *room = Py_IS_TYPE(rx, &ReceiveBuffer_Type)
        ? rb_room((ReceiveBufferObject *)rx, NULL)
        : call_method0(rx, str_room);
    Py_DECREF(rx);
    return room;
}

static PyObject *
cp_buffer_updated(ConnProtocolObject *self, PyObject *nbytes)
{
    PyObject *rx = Py_NewRef(self->rx);
    int exact = Py_IS_TYPE(rx, &ReceiveBuffer_Type);
    PyObject *r = exact ? rb_filled((ReceiveBufferObject *)rx, nbytes)
                        : PyObject_CallMethodOneArg(rx, str_filled, nbytes);
    if (r == NULL) {
        goto fail;
    }
    Py_DECREF(r);
    if (self->drop_input) {
        r = exact ? rb_clear((ReceiveBufferObject *)rx, NULL) : call_method0(rx, str_clear);
        Py_DECREF(rx);
        return r;
    }
    Py_ssize_t buffered = cp_buffered(rx);
    if (buffered < 0) {
        goto fail;
    }
    Py_DECREF(rx);
    if (buffered >= conn_rx_limit && !self->read_paused) {
        self->read_paused = 1;
        PyObject *transport = Py_NewRef(self->transport);
        r = call_method0(transport, str_pause_reading);
        Py_DECREF(transport);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    if (self->reader != Py_None) {
        PyObject *reader = self->reader;  /* the field's reference moves to cp_batch */
        self->reader = Py_NewRef(Py_None);
        if (cp_batch(self, reader) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
fail:
    Py_DECREF(rx);
    return NULL;
}

/* After a read: ``_maybe_resume_reading`` (Python) when this protocol paused the transport. */
static PyObject *
cp_after_read(ConnProtocolObject *self, PyObject *res)
{
    if (res != NULL && self->read_paused) {
        PyObject *r = call_method0((PyObject *)self, str_maybe_resume);
        if (r == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(r);
    }
    return res;
}

static PyObject *
cp_take(ConnProtocolObject *self, PyObject *n)
{
    PyObject *rx = Py_NewRef(self->rx);
    PyObject *data = Py_IS_TYPE(rx, &ReceiveBuffer_Type)
        ? rb_take((ReceiveBufferObject *)rx, n)
        : PyObject_CallMethodOneArg(rx, str_take, n);
    Py_DECREF(rx);
    return cp_after_read(self, data);
}

static PyObject *
cp_read_into(ConnProtocolObject *self, PyObject *out)
{
    PyObject *rx = Py_NewRef(self->rx);
    PyObject *n = Py_IS_TYPE(rx, &ReceiveBuffer_Type)
        ? rb_read_into((ReceiveBufferObject *)rx, out)
        : PyObject_CallMethodOneArg(rx, str_read_into, out);
    Py_DECREF(rx);
    return cp_after_read(self, n);
}

/* Arm the read-timeout timer for a wait that started at ``since``, unless one is due sooner. */
static int
cp_arm_timer(ConnProtocolObject *self, double since, PyObject *timeout)
{
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    double at = since + seconds;
    if (self->timer != Py_None && !(self->timer_at > at)) {
        return 0;  /* the timer fires no later than this wait's deadline */
    }
    if (self->timer != Py_None) {
        PyObject *timer = Py_NewRef(self->timer);
        PyObject *r = call_method0(timer, str_cancel);
        Py_DECREF(timer);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    self->timer_at = at;
    PyObject *when = PyFloat_FromDouble(at);
    PyObject *check = when != NULL ? PyObject_GetAttr((PyObject *)self, str_check_timeout) : NULL;
    PyObject *timer = NULL;
    if (check != NULL) {
        PyObject *loop = Py_NewRef(self->loop);
        PyObject *call[] = {loop, when, check};
        timer = PyObject_VectorcallMethod(str_call_at, call,
                                          3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(loop);
    }
    Py_XDECREF(check);
    Py_XDECREF(when);
    if (timer == NULL) {
        return -1;
    }
    Py_SETREF(self->timer, timer);
    return 0;
}

static PyObject *
cp_wait_for_input(ConnProtocolObject *self, PyObject *timeout)
{
    if (waiter_ready() < 0) {
        return NULL;
    }
    PyObject *waiter = waiter_alloc(&Waiter_Type);
    if (waiter == NULL) {
        return NULL;
    }
    Py_SETREF(self->reader, Py_NewRef(waiter));
    PyObject *res = NULL;
    PyObject *loop = Py_NewRef(self->loop);
    PyObject *now = call_method0(loop, str_time);
    Py_DECREF(loop);
    double since = now != NULL ? PyFloat_AsDouble(now) : -1.0;
    Py_XDECREF(now);
    if (since == -1.0 && PyErr_Occurred()) {
        goto done;
    }
    self->reader_since = since;
    Py_SETREF(self->read_timeout, Py_NewRef(timeout));
    if (timeout != Py_None && cp_arm_timer(self, since, timeout) < 0) {
        goto done;
    }
    res = waiter_wait((WaiterObject *)waiter, NULL);
done:
    /* The ``finally``: keep a raised exception across dropping the field's reference. */
    if (self->reader == waiter) {
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        Py_SETREF(self->reader, Py_NewRef(Py_None));
        PyErr_Restore(type, exc, tb);
    }
    Py_DECREF(waiter);
    return res;
}

static PyMethodDef cp_methods[] = {
    {"get_buffer", (PyCFunction)cp_get_buffer, METH_O,
     "get_buffer($self, sizehint, /)\n--\n\n"
     "The room of the receive buffer, for the transport to receive into."},
    {"buffer_updated", (PyCFunction)cp_buffer_updated, METH_O,
     "buffer_updated($self, nbytes, /)\n--\n\n"
     "The transport wrote ``nbytes`` into the room: pause reading at the bound, wake the "
     "reader."},
    {"take", (PyCFunction)cp_take, METH_O,
     "take($self, n, /)\n--\n\n"
     "Up to ``n`` buffered bytes, removed from the buffer; resumes reading when it drained."},
    {"read_into", (PyCFunction)cp_read_into, METH_O,
     "read_into($self, out, /)\n--\n\n"
     "Move buffered bytes into ``out`` (as ``take``); return how many."},
    {"wait_for_input", (PyCFunction)cp_wait_for_input, METH_O,
     "wait_for_input($self, timeout, /)\n--\n\n"
     "Park the calling fiber until the transport says there may be more to read.\n\n"
     "A cancellation point. Raises ``ReadTimeout`` once it has waited ``timeout`` seconds\n"
     "(None: no limit); nothing is lost either way. See \"Read timeouts\" in _protocol's memo."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ConnProtocol_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "greenbridge._speedups.ConnProtocol",
    .tp_basicsize = sizeof(ConnProtocolObject),
    .tp_dealloc = (destructor)cp_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state and the hot paths of greenbridge._protocol._ConnProtocol, its base (see "
              "the comment in the source). The fields start as None, False and 0.0.",
    .tp_traverse = (traverseproc)cp_traverse,
    .tp_clear = (inquiry)cp_clear,
    .tp_setattro = cp_setattro,
    .tp_methods = cp_methods,
    .tp_members = cp_members,
    .tp_new = cp_new,
};

/* The Python method ``fallback`` called as the C one was: ``self`` first. */
static PyObject *
conn_fallback(PyObject *fallback, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    Py_ssize_t total = nargs + (kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[4];
    PyObject **stack = total < 4 ? small : PyMem_Malloc((total + 1) * sizeof(PyObject *));
    if (stack == NULL) {
        return PyErr_NoMemory();
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *res = PyObject_Vectorcall(fallback, stack, nargs + 1, kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return res;
}

/* Connection's slots and ExclusiveSlot's ``busy``, read and written in place (their offsets come
   from the classes' member descriptors, as _Fiber's do) for a Connection of exactly that class and
   a slot of exactly that class: a subclass may have made any of them a property, and then the
   attribute is looked up as usual. */
static PyObject *conn_class, *exclusive_slot_class;
static Py_ssize_t conn_protocol_offset, conn_closed_offset, conn_send_closed_offset,
    conn_read_timeout_offset, conn_reading_offset, conn_writing_offset, conn_transport_offset,
    slot_busy_offset;

/* self.<name> as a new reference: in place when ``exact``. */
static PyObject *
conn_get(PyObject *self, int exact, Py_ssize_t offset, PyObject *name)
{
    if (!exact) {
        return PyObject_GetAttr(self, name);
    }
    PyObject *value = *(PyObject **)((char *)self + offset);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    return Py_NewRef(value);
}

/* The truth of self.<name>; -1 with an error. */
static int
conn_flag(PyObject *self, int exact, Py_ssize_t offset, PyObject *name)
{
    PyObject *v = conn_get(self, exact, offset, name);
    if (v == NULL) {
        return -1;
    }
    int t = truth(v);
    Py_DECREF(v);
    return t;
}

/* ExclusiveSlot: ``if slot.busy: slot.acquire()`` (which raises BusyResourceError), then
   ``slot.busy = True`` when ``take``; 0, or -1 with the error. */
static int
slot_enter(PyObject *slot, int take)
{
    int exact = (PyObject *)Py_TYPE(slot) == exclusive_slot_class;
    int busy = conn_flag(slot, exact, slot_busy_offset, str_busy);
    if (busy > 0) {
        PyObject *r = call_method0(slot, str_acquire);
        Py_XDECREF(r);
        busy = r == NULL ? -1 : 0;
    }
    if (busy < 0 || !take) {
        return busy;
    }
    if (exact) {
        Py_XSETREF(*(PyObject **)((char *)slot + slot_busy_offset), Py_NewRef(Py_True));
        return 0;
    }
    return PyObject_SetAttr(slot, str_busy, Py_True);
}

/* ``slot.busy = False``; 0, or -1 with the error. */
static int
slot_leave(PyObject *slot)
{
    if ((PyObject *)Py_TYPE(slot) == exclusive_slot_class) {
        Py_XSETREF(*(PyObject **)((char *)slot + slot_busy_offset), Py_NewRef(Py_False));
        return 0;
    }
    return PyObject_SetAttr(slot, str_busy, Py_False);
}

/* The connection's protocol when it is of this type (a new reference), else NULL with no error
   set; NULL with an error when the attribute is missing. */
static ConnProtocolObject *
conn_protocol(PyObject *self, int exact)
{
    PyObject *p = conn_get(self, exact, conn_protocol_offset, str__protocol);
    if (p != NULL && !PyObject_TypeCheck(p, &ConnProtocol_Type)) {
        Py_CLEAR(p);
    }
    return (ConnProtocolObject *)p;
}

/* Raise the exception instance ``exc`` (a new reference, consumed), or keep the error when it is
   NULL. */
static void
raise_consumed(PyObject *exc)
{
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

/* Connection._input_ready: 1 once bytes are buffered (waiting for them if need be), 0 at end of
   input, -1 with an error. */
static int
conn_input_ready(PyObject *self, int exact, ConnProtocolObject *p)
{
    for (;;) {
        int closed = conn_flag(self, exact, conn_closed_offset, str__closed);
        if (closed != 0) {
            if (closed > 0) {
                PyErr_SetString(closed_error, "read from a connection after close()");
            }
            return -1;
        }
        PyObject *rx = Py_NewRef(p->rx);
        Py_ssize_t buffered = cp_buffered(rx);
        Py_DECREF(rx);
        if (buffered != 0) {
            return buffered > 0 ? 1 : -1;
        }
        if (p->drop_input || p->eof) {
            return 0;
        }
        if (p->lost) {
            if (p->error == Py_None) {
                return 0;
            }
            raise_consumed(PyObject_CallOneArg(connection_error, p->error));
            return -1;
        }
        PyObject *reading = conn_get(self, exact, conn_reading_offset, str__reading);
        if (reading == NULL) {
            return -1;
        }
        if (slot_enter(reading, 1) < 0) {
            Py_DECREF(reading);
            return -1;
        }
        PyObject *timeout = conn_get(self, exact, conn_read_timeout_offset, str__read_timeout);
        PyObject *r = timeout != NULL ? cp_wait_for_input(p, timeout) : NULL;
        Py_XDECREF(timeout);
        /* The ``finally``: the slot is free again, whatever happened. */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        int freed = slot_leave(reading);
        Py_DECREF(reading);
        if (type != NULL) {
            if (freed < 0) {
                PyErr_Clear();  /* the error of the wait is the one to report */
            }
            PyErr_Restore(type, exc, tb);
            return -1;
        }
        if (freed < 0) {
            Py_XDECREF(r);
            return -1;
        }
        Py_DECREF(r);
    }
}

/* Connection.read(n=DEFAULT_CHUNK) */
static PyObject *
conn_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *n_obj = NULL;
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs == 1 && nkw == 0) {
        n_obj = args[0];
    }
    else if (nargs == 0 && nkw == 1 && PyUnicode_CompareWithASCIIString(
                                              PyTuple_GET_ITEM(kwnames, 0), "n") == 0) {
        n_obj = args[0];
    }
    else if (nargs != 0 || nkw != 0) {
        return conn_fallback(conn_py_read, self, args, nargs, kwnames);
    }
    Py_ssize_t n = conn_chunk;
    if (n_obj != NULL) {
        if (!PyLong_CheckExact(n_obj)) {
            return conn_fallback(conn_py_read, self, args, nargs, kwnames);
        }
        n = PyLong_AsSsize_t(n_obj);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();  /* a huge count: the Python method takes it */
            return conn_fallback(conn_py_read, self, args, nargs, kwnames);
        }
    }
    if (n <= 0) {
        return conn_fallback(conn_py_read, self, args, nargs, kwnames);
    }
    int exact = (PyObject *)Py_TYPE(self) == conn_class;
    ConnProtocolObject *p = conn_protocol(self, exact);
    if (p == NULL) {
        return PyErr_Occurred() ? NULL : conn_fallback(conn_py_read, self, args, nargs, kwnames);
    }
    PyObject *res = NULL;
    int ready = conn_input_ready(self, exact, p);
    if (ready > 0) {
        PyObject *rx = Py_NewRef(p->rx);
        if (Py_IS_TYPE(rx, &ReceiveBuffer_Type)) {
            res = cp_after_read(p, rb_take_n((ReceiveBufferObject *)rx, n));
        }
        else {  /* the Python buffer: its take() gets the count as an int */
            PyObject *count = n_obj != NULL ? Py_NewRef(n_obj) : PyLong_FromSsize_t(n);
            res = count != NULL ? cp_take(p, count) : NULL;
            Py_XDECREF(count);
        }
        Py_DECREF(rx);
    }
    else if (ready == 0) {
        res = PyBytes_FromStringAndSize(NULL, 0);
    }
    Py_DECREF(p);
    return res;
}

/* Connection.read_into(buf, /) */
static PyObject *
conn_read_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || kwnames != NULL) {
        return conn_fallback(conn_py_read_into, self, args, nargs, kwnames);
    }
    Py_ssize_t len = PyObject_Length(args[0]);
    if (len <= 0) {
        if (len < 0) {
            return NULL;  /* len(buf) raised, as in the Python method */
        }
        return conn_fallback(conn_py_read_into, self, args, nargs, kwnames);
    }
    int exact = (PyObject *)Py_TYPE(self) == conn_class;
    ConnProtocolObject *p = conn_protocol(self, exact);
    if (p == NULL) {
        return PyErr_Occurred() ? NULL
                                : conn_fallback(conn_py_read_into, self, args, nargs, kwnames);
    }
    PyObject *res = NULL;
    int ready = conn_input_ready(self, exact, p);
    if (ready > 0) {
        res = cp_read_into(p, args[0]);
    }
    else if (ready == 0) {
        res = PyLong_FromLong(0);
    }
    Py_DECREF(p);
    return res;
}

/* Connection.write(data, /) */
static PyObject *
conn_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || kwnames != NULL) {
        return conn_fallback(conn_py_write, self, args, nargs, kwnames);
    }
    int exact = (PyObject *)Py_TYPE(self) == conn_class;
    int refused = conn_flag(self, exact, conn_send_closed_offset, str__send_closed);
    if (refused != 0) {
        return refused < 0 ? NULL : conn_fallback(conn_py_write, self, args, nargs, kwnames);
    }
    ConnProtocolObject *p = conn_protocol(self, exact);
    if (p == NULL) {
        return PyErr_Occurred() ? NULL : conn_fallback(conn_py_write, self, args, nargs, kwnames);
    }
    PyObject *writing = NULL, *transport = NULL, *data = NULL, *res = NULL;
    writing = conn_get(self, exact, conn_writing_offset, str__writing);
    if (writing == NULL || slot_enter(writing, 0) < 0
        || (transport = conn_get(self, exact, conn_transport_offset, str__transport)) == NULL) {
        goto done;
    }
    int gone = p->lost ? 1 : call_truth(transport, str_is_closing);
    if (gone != 0) {
        if (gone > 0) {
            raise_consumed(call_method0(self, str_broken));
        }
        goto done;
    }
    data = PyBytes_CheckExact(args[0])
        ? Py_NewRef(args[0])
        : PyObject_CallOneArg((PyObject *)&PyBytes_Type, args[0]);  /* the transport may keep it */
    if (data == NULL) {
        goto done;
    }
    PyObject *r = PyObject_CallMethodOneArg(transport, str_write, data);
    if (r == NULL) {
        goto done;
    }
    Py_DECREF(r);
    gone = call_truth(transport, str_is_closing);
    if (gone != 0) {
        /* The send failed (the peer reset or closed): the transport dropped the bytes and will
           report connection_lost at the next loop iteration. Say so now. */
        if (gone > 0) {
            raise_consumed(call_method0(self, str_broken));
        }
        goto done;
    }
    if (p->write_paused) {
        PyObject *r = call_method0(self, str_wait_drained);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
    }
    res = PyLong_FromSsize_t(PyBytes_GET_SIZE(data));
done:
    Py_XDECREF(data);
    Py_XDECREF(transport);
    Py_XDECREF(writing);
    Py_DECREF(p);
    return res;
}

static PyMethodDef conn_read_def = {"read", (PyCFunction)(void (*)(void))conn_read,
                                    METH_FASTCALL | METH_KEYWORDS, NULL};
static PyMethodDef conn_read_into_def = {"read_into", (PyCFunction)(void (*)(void))conn_read_into,
                                         METH_FASTCALL | METH_KEYWORDS, NULL};
static PyMethodDef conn_write_def = {"write", (PyCFunction)(void (*)(void))conn_write,
                                     METH_FASTCALL | METH_KEYWORDS, NULL};

/* init_connection(Connection, ExclusiveSlot, ClosedResourceError, connection_error,
   RECEIVE_BUFFER_SIZE, DEFAULT_CHUNK, (read, read_into, write), (read_doc, read_into_doc,
   write_doc)) -> the three C methods, descriptors of Connection, each with its docstring (a text
   signature first); the Python methods are their fallbacks. Connection's hot attributes and
   ExclusiveSlot's ``busy`` must be slots. After init_waiter. */
static PyObject *
init_connection(PyObject *module, PyObject *args)
{
    PyObject *cls, *slot_cls, *closed, *conn_error, *py, *docs;
    Py_ssize_t limit, chunk;
    if (!PyArg_ParseTuple(args, "O!O!OOnnO!O!:init_connection", &PyType_Type, &cls, &PyType_Type,
                          &slot_cls, &closed, &conn_error, &limit, &chunk, &PyTuple_Type, &py,
                          &PyTuple_Type, &docs)) {
        return NULL;
    }
    if (waiter_ready() < 0) {
        return NULL;
    }
    struct { Py_ssize_t *offset; PyObject *type; const char *name; } slots[] = {
        {&conn_protocol_offset, cls, "_protocol"}, {&conn_closed_offset, cls, "_closed"},
        {&conn_send_closed_offset, cls, "_send_closed"},
        {&conn_read_timeout_offset, cls, "_read_timeout"}, {&conn_reading_offset, cls, "_reading"},
        {&conn_writing_offset, cls, "_writing"}, {&conn_transport_offset, cls, "_transport"},
        {&slot_busy_offset, slot_cls, "busy"},
    };
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        if ((*slots[i].offset = slot_offset(slots[i].type, slots[i].name)) < 0) {
            return NULL;
        }
    }
    Py_XSETREF(conn_class, Py_NewRef(cls));
    Py_XSETREF(exclusive_slot_class, Py_NewRef(slot_cls));
    if (PyTuple_GET_SIZE(py) != 3 || PyTuple_GET_SIZE(docs) != 3) {
        PyErr_SetString(PyExc_ValueError, "init_connection: three methods and three docstrings");
        return NULL;
    }
    const char *utf8[3];
    for (int i = 0; i < 3; i++) {
        PyObject *doc = PyTuple_GET_ITEM(docs, i);
        if (!PyUnicode_Check(doc) || (utf8[i] = PyUnicode_AsUTF8(doc)) == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "init_connection: docstrings are str");
            }
            return NULL;
        }
    }
    Py_XSETREF(conn_docs, Py_NewRef(docs));
    Py_XSETREF(closed_error, Py_NewRef(closed));
    Py_XSETREF(connection_error, Py_NewRef(conn_error));
    Py_XSETREF(conn_py_read, Py_NewRef(PyTuple_GET_ITEM(py, 0)));
    Py_XSETREF(conn_py_read_into, Py_NewRef(PyTuple_GET_ITEM(py, 1)));
    Py_XSETREF(conn_py_write, Py_NewRef(PyTuple_GET_ITEM(py, 2)));
    conn_rx_limit = limit;
    conn_chunk = chunk;
    PyMethodDef *defs[] = {&conn_read_def, &conn_read_into_def, &conn_write_def};
    PyObject *res = PyTuple_New(3);
    for (int i = 0; res != NULL && i < 3; i++) {
        defs[i]->ml_doc = utf8[i];
        PyObject *descr = PyDescr_NewMethod((PyTypeObject *)cls, defs[i]);
        if (descr == NULL) {
            Py_CLEAR(res);
            break;
        }
        PyTuple_SET_ITEM(res, i, descr);
    }
    return res;
}

/* Called by PyInit__speedups. */
static int
connection_register(PyObject *module)
{
    struct { PyObject **str; const char *text; } names[] = {
        {&str_room, "room"}, {&str_filled, "filled"}, {&str_take, "take"},
        {&str_read_into, "read_into"}, {&str_clear, "clear"}, {&str_buffered, "buffered"},
        {&str_pause_reading, "pause_reading"}, {&str_maybe_resume, "_maybe_resume_reading"},
        {&str_time, "time"}, {&str_call_at, "call_at"}, {&str_cancel, "cancel"},
        {&str_add, "add"}, {&str_check_timeout, "_check_read_timeout"},
        {&str__closed, "_closed"}, {&str__protocol, "_protocol"}, {&str__reading, "_reading"},
        {&str__writing, "_writing"}, {&str__read_timeout, "_read_timeout"},
        {&str__send_closed, "_send_closed"}, {&str__transport, "_transport"},
        {&str_busy, "busy"}, {&str_acquire, "acquire"}, {&str_is_closing, "is_closing"},
        {&str_write, "write"}, {&str_broken, "_broken"}, {&str_wait_drained, "_wait_drained"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].str = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return -1;
        }
    }
    return add_type(module, "ConnProtocol", &ConnProtocol_Type);
}

/* ---- Fibers' bookkeeping ---- */
/*
 * The per-fiber steps around the driver and the Waiter that used to be Python calls: making a
 * new fiber, and the thread check of a wake-up that does not come from the fiber's parent (every
 * waiter an Event wakes from another fiber). Each does what the Python it stands for does, which
 * stays for the pure-Python path (GREENBRIDGE_NO_SPEEDUPS=1) and for the rare cases.
 *
 * Why. 100,000 fibers forked on a Switch, each waiting on one Event (benchmarks/bench_fibers.py,
 * bench_instructions.py's ``fork``): a new fiber ran _Fiber.__init__, a Python frame calling
 * greenlet's __init__ through super() and storing seven slots; and every wake from the host
 * fiber called _control._check_waker_thread, a Python frame and a getpid() (asyncio's
 * _get_running_loop checks the pid) to find what the thread roots already say.
 */

static Py_ssize_t stepper_offset = -1;  /* _Fiber's ``_stepper`` slot, found on first use */

/* Interpreter data stacks from slabs rather than one mmap each.
 *
 * A greenlet's first Python frame makes CPython allocate a data stack chunk of its own (16 KiB,
 * of which a parked fiber touches its first page), which the greenlet frees when it dies, both
 * through the "arena allocator": an mmap and a munmap per fiber, the munmap splitting the
 * mapping its neighbours had merged into. Forking 100,000 fibers at once, that was a third of the
 * process's time, in the kernel. So the first fiber the driver makes puts a wrapper in front of
 * the arena allocator: requests of exactly one chunk are served from slabs of SLAB_CHUNKS chunks
 * (one mmap each, unmapped once every chunk of it is free again, one empty slab kept as a spare),
 * every other request (pymalloc's arenas, larger chunks) goes to the allocator it replaced. A
 * slab's chunks start 16 bytes into a page, where the slab's address is kept, so that a parked
 * fiber's frames still touch one page; mmap's chunks start on a page boundary (checked before
 * installing, else nothing is installed), which is how ``free`` tells them apart -- a chunk
 * allocated before the wrapper is freed where it came from. Every thread's data stack goes
 * through it, greenbridge's fibers or not; they get the same memory, from a slab. The slab lists
 * have a lock of their own (below). Free-threaded builds (another allocator, not measured) and
 * systems without mmap keep CPython's allocator. */
#define FIBERS_CHUNK_SIZE (16 * 1024)  /* DATA_STACK_CHUNK_SIZE in CPython's Python/pystate.c */
#define FIBERS_PAGE ((uintptr_t)4096)
#define FIBERS_SLAB_CHUNKS 64
/* A chunk every five pages, the fifth never touched: the 16 bytes before a chunk, where its
   slab's address is, are not the tail of the previous chunk. */
#define FIBERS_STRIDE (FIBERS_CHUNK_SIZE + FIBERS_PAGE)
#define FIBERS_SLAB_BYTES (FIBERS_SLAB_CHUNKS * FIBERS_STRIDE)
#if defined(__unix__) && !defined(Py_GIL_DISABLED)
#include <sys/mman.h>
#include <pthread.h>
#define FIBERS_SLABS 1
#endif

static int fibers_arena_state;  /* 0: not tried yet; 1: installed; -1: not (see above) */

#ifdef FIBERS_SLABS
typedef struct fibers_slab {
    char *base;                      /* the mapping, FIBERS_SLAB_BYTES */
    void *free_list;                 /* freed chunks, each holding the next one's address */
    int fresh;                       /* chunks [fresh, FIBERS_SLAB_CHUNKS) were never handed out */
    int used;                        /* chunks handed out and not freed */
    struct fibers_slab *prev, *next; /* in fibers_partial while it has a free chunk */
} fibers_slab;

/* The slab lists' lock. The GIL does not serialise every call: subinterpreters with a GIL of
   their own share the arena allocator, and PyThreadState_Delete (which frees a thread's chunks)
   may be called without the GIL. fork() takes it first (pthread_atfork), so that a child
   process starts with the lists consistent and the lock free. */
static pthread_mutex_t fibers_lock = PTHREAD_MUTEX_INITIALIZER;

static void
fibers_before_fork(void)
{
    pthread_mutex_lock(&fibers_lock);
}

static void
fibers_after_fork(void)
{
    pthread_mutex_unlock(&fibers_lock);
}

static PyObjectArenaAllocator fibers_arena_next;  /* the allocator the wrapper is in front of */
static fibers_slab *fibers_partial;              /* slabs with a free chunk, most recent first */
static fibers_slab *fibers_spare;                /* an empty slab kept mapped, or NULL */

static void
fibers_unlink(fibers_slab *slab)
{
    if (slab->prev != NULL) {
        slab->prev->next = slab->next;
    }
    else {
        fibers_partial = slab->next;
    }
    if (slab->next != NULL) {
        slab->next->prev = slab->prev;
    }
    slab->prev = slab->next = NULL;
}

static void
fibers_push(fibers_slab *slab)
{
    slab->prev = NULL;
    slab->next = fibers_partial;
    if (fibers_partial != NULL) {
        fibers_partial->prev = slab;
    }
    fibers_partial = slab;
}

/* A chunk from a slab (the lock held), or NULL when no slab could be mapped. */
static void *
fibers_slab_alloc(void)
{
    fibers_slab *slab = fibers_partial;
    if (slab == NULL) {
        if ((slab = fibers_spare) != NULL) {
            fibers_spare = NULL;
        }
        else {
            slab = malloc(sizeof(fibers_slab));
            void *base = slab == NULL ? MAP_FAILED
                : mmap(NULL, FIBERS_SLAB_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
            if (base == MAP_FAILED) {
                free(slab);
                return NULL;
            }
            slab->base = base;
            slab->free_list = NULL;
            slab->fresh = slab->used = 0;
        }
        fibers_push(slab);
    }
    char *chunk;
    if (slab->free_list != NULL) {
        chunk = slab->free_list;
        slab->free_list = *(void **)chunk;
    }
    else {
        chunk = slab->base + (size_t)slab->fresh++ * FIBERS_STRIDE + 16;
        ((fibers_slab **)chunk)[-2] = slab;  /* 16 bytes before the chunk, in its first page */
    }
    if (++slab->used == FIBERS_SLAB_CHUNKS) {
        fibers_unlink(slab);  /* full */
    }
    return chunk;
}

static void *
fibers_arena_alloc(void *ctx, size_t size)
{
    if (size != FIBERS_CHUNK_SIZE) {
        return fibers_arena_next.alloc(fibers_arena_next.ctx, size);
    }
    pthread_mutex_lock(&fibers_lock);
    void *chunk = fibers_slab_alloc();
    pthread_mutex_unlock(&fibers_lock);
    return chunk != NULL ? chunk : fibers_arena_next.alloc(fibers_arena_next.ctx, size);
}

static void
fibers_arena_free(void *ctx, void *ptr, size_t size)
{
    if (size != FIBERS_CHUNK_SIZE || ((uintptr_t)ptr & (FIBERS_PAGE - 1)) != 16) {
        fibers_arena_next.free(fibers_arena_next.ctx, ptr, size);
        return;
    }
    fibers_slab *slab = ((fibers_slab **)ptr)[-2];
    fibers_slab *unmap = NULL;
    pthread_mutex_lock(&fibers_lock);
    if (slab->used-- == FIBERS_SLAB_CHUNKS) {
        fibers_push(slab);  /* it has a free chunk again */
    }
    *(void **)ptr = slab->free_list;
    slab->free_list = ptr;
    if (slab->used == 0) {
        fibers_unlink(slab);
        if (fibers_spare == NULL) {
            fibers_spare = slab;  /* its touched pages stay: at most one slab's */
        }
        else {
            unmap = slab;
        }
    }
    pthread_mutex_unlock(&fibers_lock);
    if (unmap != NULL) {
        munmap(unmap->base, FIBERS_SLAB_BYTES);
        free(unmap);
    }
}
#endif

static void
fibers_install_arena(void)
{
    fibers_arena_state = -1;
#ifdef FIBERS_SLABS
    PyObjectArenaAllocator current;
    PyObject_GetArenaAllocator(&current);
    if (current.alloc == NULL || current.free == NULL) {
        return;
    }
    void *probe = current.alloc(current.ctx, FIBERS_CHUNK_SIZE);
    if (probe == NULL) {
        return;
    }
    int aligned = ((uintptr_t)probe & (FIBERS_PAGE - 1)) == 0;
    current.free(current.ctx, probe, FIBERS_CHUNK_SIZE);
    if (!aligned) {
        return;  /* not mmap's: its chunks and the slabs' could not be told apart */
    }
    if (pthread_atfork(fibers_before_fork, fibers_after_fork, fibers_after_fork) != 0) {
        return;
    }
    fibers_arena_next = current;
    PyObjectArenaAllocator wrapper = {NULL, fibers_arena_alloc, fibers_arena_free};
    PyObject_SetArenaAllocator(&wrapper);
    fibers_arena_state = 1;
#endif
}

/* _Fiber(run, parent) as a new reference: greenlet's own __init__, then the slots as
   _control._Fiber.__init__ sets them (keep the two in step), without that Python frame. */
static PyObject *
fibers_new_fiber(PyObject *run, PyObject *parent)
{
    PyTypeObject *type = (PyTypeObject *)fiber_type;
    PyTypeObject *base = type->tp_base;  /* greenlet.greenlet (take_fiber_type checked it) */
    if (stepper_offset < 0 && (stepper_offset = slot_offset(fiber_type, "_stepper")) < 0) {
        return NULL;
    }
    if (fibers_arena_state == 0) {
        fibers_install_arena();
    }
    if (type->tp_init == base->tp_init || base->tp_init == NULL) {
        /* No __init__ of its own to stand for: let the type make it as Python would. */
        return call2(fiber_type, run, parent);
    }
    PyObject *args = PyTuple_Pack(2, run, parent);
    if (args == NULL) {
        return NULL;
    }
    PyObject *fiber = type->tp_new(type, args, NULL);
    if (fiber != NULL && base->tp_init(fiber, args, NULL) < 0) {
        Py_CLEAR(fiber);
    }
    Py_DECREF(args);
    if (fiber == NULL) {
        return NULL;
    }
    fiber_set(fiber, call_offset, Py_None);
    fiber_set(fiber, stepper_offset, Py_None);
    fiber_set(fiber, handover_offset, Py_None);
    fiber_set(fiber, outcome_offset, Py_None);
    fiber_set(fiber, park_offset, Py_None);
    fiber_set(fiber, direct_offset, Py_False);
    fiber_set(fiber, task_offset, Py_None);
    return fiber;
}

/* The main greenlet of the thread ``glet`` belongs to, as a new reference (_control._thread_root:
   every parent chain ends there). */
static PyObject *
fibers_thread_root(PyObject *glet)
{
    PyObject *current = Py_NewRef(glet);
    for (;;) {
        PyObject *parent = PyObject_GetAttr(current, str_parent);
        if (parent == NULL) {
            Py_DECREF(current);
            return NULL;
        }
        if (parent == Py_None) {
            Py_DECREF(parent);
            return current;
        }
        Py_SETREF(current, parent);
    }
}

/* _control._check_waker_thread(fiber): -1 with RuntimeError when the caller cannot wake
   ``fiber`` from here. The same thread roots (the second of the Python function's two tests,
   either of which lets the wake-up through) answer in C; only a caller in another thread's
   greenlets, or a fiber not parked, goes to the Python function, which then decides. */
static int
fibers_check_waker_thread(PyObject *fiber)
{
    PyObject *current = PyObject_CallNoArgs(getcurrent);
    PyObject *here = current ? fibers_thread_root(current) : NULL;
    Py_XDECREF(current);
    PyObject *there = here ? fibers_thread_root(fiber) : NULL;
    if (there == NULL) {
        Py_XDECREF(here);
        return -1;
    }
    Py_DECREF(here);  /* only identities are compared: a main greenlet lives as its thread does */
    Py_DECREF(there);
    if (here == there) {
        return 0;
    }
    PyObject *r = PyObject_CallOneArg(check_waker_thread, fiber);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* running_loop_now() for the tests, which hold it to asyncio._get_running_loop()'s answer. */
static PyObject *
running_loop_py(PyObject *module, PyObject *unused)
{
    if (running_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "greenbridge._speedups: init was not called");
        return NULL;
    }
    return running_loop_now();
}

static PyMethodDef methods[] = {
    {"running_loop", running_loop_py, METH_NOARGS,
     "running_loop() -> the running loop or None, as asyncio._get_running_loop() (call init first)"},
    {"init", init, METH_VARARGS,
     "init(fiber_type, getcurrent, slow_path, suspend_check, doc, bad_yield, get_running_loop, "
     "task_of) -> the C await_from_green"},
    {"init_control", init_control, METH_VARARGS,
     "init_control(fiber_type, getcurrent, parked, woken, pass_to_driver, task_of, enter_task, "
     "leave_task, swap_current_task or None, get_running_loop) -> (park, resume)"},
    {"park", park, METH_O, "_control._park in C (call init_control first)"},
    {"init_driver", init_driver, METH_VARARGS,
     "init_driver(fiber_type, getcurrent, finished, raised, fiber_main, local, idle_fibers, "
     "guard_pool, await_iter, get_running_loop, task_of) -> drive"},
    {"drive", (PyCFunction)(void (*)(void))drive, METH_FASTCALL,
     "drive(fn, args, kwargs[, child]): _core._drive in C (call init_driver first)"},
    {"resume", resume, METH_O, "_control._resume in C (call init_control first)"},
    {"init_waiter", init_waiter, METH_VARARGS,
     "init_waiter(foreign_future, await_from_green, check_waker_thread, CancelledError) -> "
     "(Waiter, WakeBatch) (call init_control first)"},
    {"init_connection", init_connection, METH_VARARGS,
     "init_connection(Connection, ExclusiveSlot, ClosedResourceError, connection_error, "
     "RECEIVE_BUFFER_SIZE, "
     "DEFAULT_CHUNK, (read, read_into, write), (read_doc, read_into_doc, write_doc)) -> the C "
     "read, read_into and write (call init_waiter first)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "greenbridge._speedups",
    "Optional C accelerator for await_from_green, _park and _resume, and the receive buffer (see "
    "the comment at the top of the source).",
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
    str_park = PyUnicode_InternFromString("_park");
    str_done = PyUnicode_InternFromString("done");
    str_get_loop = PyUnicode_InternFromString("get_loop");
    str_set_result = PyUnicode_InternFromString("set_result");
    str_create_future = PyUnicode_InternFromString("create_future");
#ifdef RUNNING_LOOP_HOLDER
    holder_pid = getpid();
    if (pthread_atfork(NULL, NULL, holder_after_fork) != 0) {
        holder_unknown = 1;  /* a child could not learn its pid: never read the holder */
    }
    holder_key = PyUnicode_InternFromString("__asyncio_running_event_loop__");
    if (holder_key == NULL) {
        return NULL;
    }
#endif
    if (!str_direct || !str_blocking || !str_parent || !str_switch || !str_throw || !str_value
        || !str_task || !str_park || !str_done || !str_get_loop || !str_set_result
        || !str_create_future) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module != NULL && (receive_buffer_register(module) < 0 || driver_register(module) < 0)) {
        Py_CLEAR(module);
    }
    if (module != NULL && (waiter_register(module) < 0 || connection_register(module) < 0)) {
        Py_CLEAR(module);
    }
    return module;
}
