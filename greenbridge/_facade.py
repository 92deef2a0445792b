"""Green façades: a synchronous view of an async object, for green code (SQLAlchemy's pattern).

SQLAlchemy runs its synchronous ORM over asyncio drivers by wrapping each driver object in a
hand-written adapter whose methods call ``await_(driver.method(...))``. ``green_facade`` makes
that adapter for any object, by one rule applied everywhere:

* **Calls.** ``facade.method(*args, **kwargs)`` calls ``target.method(*args, **kwargs)``; a result
  that is awaitable (a coroutine, a Future, anything with ``__await__``) is awaited with
  ``await_from_green``. So ``async def`` methods, and methods returning awaitables such as
  aiosqlite's ``Connection.execute`` or aiohttp's ``ClientSession.get``, become plain calls.
  Façades passed as arguments are unwrapped first (``pool.release(conn)``).
* **Calls written as a ``with`` expression.** ``with facade.method(...) as v:`` stands for
  ``async with target.method(...) as v:``: a result that is an async context manager is entered,
  not awaited, even when it is awaitable too (asyncpg's ``pool.acquire()``, aiohttp's
  ``session.get()``: both ``await x`` and ``async with x`` work on them, and mean different
  things). The call sees that it is the expression of a ``with`` statement from its caller's
  next bytecode instruction (``BEFORE_WITH``, CPython 3.11 to 3.13).
* **Context managers.** ``with facade as value:`` awaits ``__aenter__`` / ``__aexit__``
  (or uses ``__enter__`` / ``__exit__`` when the target only has those).
* **Iteration.** ``for item in facade:`` steps ``__aiter__`` / ``__anext__`` (or ``__iter__``).
* **Wrapping.** Every value coming out -- a call's result, an attribute, the value ``with``
  binds, an item -- that is itself an *async object* (its type has an ``async def`` method, an
  async generator method, ``__aenter__``, ``__aiter__`` or ``__anext__``) comes out wrapped in a
  façade of its own, so chains work: ``db.connect(path).execute(sql).fetchall()``. A class of
  async objects comes out as a façade too, whose calls (its constructor, its class methods) give
  façades: ``gb.green_facade(redis.asyncio).Redis()``. Exception classes and everything else come
  out unchanged (``except facade.Error`` still catches).
* **Errors.** An exception keeps its type (``except sqlite3.OperationalError`` still works) and
  gets a note naming the wrapped call, e.g. ``greenbridge façade: raised by Cursor.execute()``.
* **Types.** ``gb.green_method`` declares typed synchronous methods in a ``GreenFacade[X]``
  subclass; mypy then checks their arguments and results (see ``green_method``).

The guide, with executed examples, is docs/facades.md.

Rejected designs:

* Deciding "is this a coroutine method" from ``inspect.iscoroutinefunction`` on the attribute
  alone. Drivers wrap their coroutine methods (aiosqlite's ``execute`` is a plain function
  returning an awaitable ``Result``), so the result is what decides.
* A lazy result for objects that are both awaitable and async context managers, awaited on first
  use unless entered: ``conn.execute("INSERT ...")`` as a statement would then never run, and
  errors would surface far from their call. The syntax decides, as it does for native code.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dis
import inspect
import sys
import types
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast, overload

from ._async_adapters import iterate
from ._core import _no_green_message, await_from_green, in_green
from ._errors import NoGreenContext

__all__ = ("GreenFacade", "green_facade", "green_method")

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")
P = ParamSpec("P")

_NOTE_PREFIX = "greenbridge façade: raised by "

# type -> whether its instances are async objects (see the module docstring). Weak, so that
# classes created on the fly can still be collected.
_async_types: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()

_ASYNC_DUNDERS = ("__aenter__", "__aiter__", "__anext__")

# asyncio's marker for functions that return coroutines without being ``async def`` (set by
# ``asyncio.coroutines`` helpers and by drivers such as asyncpg on Python 3.11).
_ASYNCIO_MARKER = getattr(asyncio.coroutines, "_is_coroutine", None)


def _is_async_type(cls: type) -> bool:
    try:
        return _async_types[cls]
    except KeyError:
        pass
    except TypeError:  # a type that cannot be weakly referenced: decide, do not cache
        return _scan_async_type(cls)
    found = _async_types[cls] = _scan_async_type(cls)
    return found


def _is_async_function(attr: Any) -> bool:
    """An ``async def`` or async generator function, also behind wrappers (``__wrapped__``)."""
    if isinstance(attr, (staticmethod, classmethod)):
        attr = attr.__func__
    if not callable(attr):
        return False
    if _ASYNCIO_MARKER is not None and getattr(attr, "_is_coroutine", None) is _ASYNCIO_MARKER:
        return True
    candidates = [attr]
    with contextlib.suppress(ValueError):  # a __wrapped__ cycle
        candidates.append(inspect.unwrap(attr))
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in candidates)


def _scan_async_type(cls: type) -> bool:
    if any(hasattr(cls, name) for name in _ASYNC_DUNDERS):
        return True
    if cls.__module__ == "builtins":  # coroutines are awaited, not wrapped; the rest is sync
        return False
    return any(_is_async_function(attr) for klass in cls.__mro__ for attr in vars(klass).values())


def _wrap(value: Any, *, opened: bool = False) -> Any:
    """``value`` in a façade when it is an async object, or a class of them (not an exception
    class, not already a façade); ``opened``: awaiting ``value`` returned ``value`` itself (see
    ``GreenFacade.__enter__``)."""
    if isinstance(value, GreenFacade):
        return value
    if isinstance(value, type):
        if issubclass(value, BaseException) or not _is_async_type(value):
            return value
    elif not _is_async_type(type(value)):
        return value
    facade: GreenFacade[Any] = GreenFacade(value)
    if opened:
        object.__setattr__(facade, "_GreenFacade__opened", True)
    return facade


def _unwrap(value: Any) -> Any:
    return value.__wrapped__ if isinstance(value, GreenFacade) else value


def _add_note(exc: BaseException, what: str) -> None:
    # Only real errors: cancellation and exits pass through many layers and stay clean.
    if isinstance(exc, Exception):
        note = _NOTE_PREFIX + what
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)


def _await_result(result: Any, what: str) -> Any:
    """Await ``result`` for the façade call ``what`` when it is awaitable (not wrapped)."""
    if inspect.isawaitable(result):
        if not in_green():
            if isinstance(result, collections.abc.Coroutine):
                result.close()  # never started: no "never awaited" warning
            raise NoGreenContext(_no_green_message(f"{what} (through a green façade)"))
        try:
            result = await_from_green(result)
        except BaseException as exc:
            _add_note(exc, what)
            raise
    return result


# Opcodes that follow the call in ``with call(...) as x:`` (CPython 3.11 to 3.13), and the
# inline cache entries that may sit between the call and it.
_BEFORE_WITH = dis.opmap.get("BEFORE_WITH")
_CACHE = dis.opmap.get("CACHE", 0)


def _is_with_expression(frame: types.FrameType) -> bool:
    """True when the call ``frame`` is making right now is the expression of a ``with``."""
    if _BEFORE_WITH is None:  # another bytecode: awaited, as any call (see the module docstring)
        return False
    code = frame.f_code.co_code
    i = frame.f_lasti + 2
    while i < len(code) and code[i] == _CACHE:
        i += 2
    return i < len(code) and code[i] == _BEFORE_WITH


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> Any:
    """Call ``fn`` for a façade: unwrap façade arguments, await (or keep, for ``with``) and wrap
    the result. Called by the function the user called, so the user's frame is two up."""
    if args:
        args = tuple(map(_unwrap, args))
    if kwargs:
        kwargs = {name: _unwrap(value) for name, value in kwargs.items()}
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        _add_note(exc, what)
        raise
    if not inspect.isawaitable(result):
        return _wrap(result)
    if hasattr(type(result), "__aenter__") and _is_with_expression(sys._getframe(2)):
        return GreenFacade(result)  # ``with`` enters it: its __aenter__ does the work
    value = _await_result(result, what)
    return _wrap(value, opened=value is result)


class GreenFacade(Generic[T]):
    """A synchronous view of the async object ``__wrapped__``, for green code.

    Made by ``green_facade(obj)``; see the ``greenbridge._facade`` module docstring for the
    rules. Attribute reads go to the wrapped object (async objects among them come out wrapped,
    methods come out as plain functions), attribute writes go to it unchanged; equality, hashing
    and ``dir()`` are the wrapped object's; a façade of a class is callable (its instances come
    out wrapped) and works with ``isinstance``; other operators are not forwarded.

    Subclass it to declare a typed façade: ``class SyncRedis(gb.GreenFacade[Redis]):`` with
    ``get = gb.green_method(Redis.get)`` in its body, then ``SyncRedis(redis_client).get("k")``.
    To a type checker a subclass has only what it declares; ``green_facade()``'s result has
    every attribute, as ``Any``.
    """

    __slots__ = ("__opened", "__weakref__", "__wrapped__")

    __wrapped__: T
    # True when this façade's object came from awaiting itself, the "open" idiom
    # (``conn = await aiosqlite.connect(...)``): it is open already, see __enter__.
    __opened: bool

    def __init__(self, target: T) -> None:
        """Wrap ``target`` (a façade passed in is unwrapped first). Never suspends."""
        object.__setattr__(self, "__wrapped__", _unwrap(target))
        object.__setattr__(self, "_GreenFacade__opened", False)

    def __repr__(self) -> str:
        return f"<green façade of {self.__wrapped__!r}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self.__wrapped__)) | {"__wrapped__"})

    # Each access makes a fresh façade (``conn.cursor_attr is conn.cursor_attr`` is false), so
    # equality and hashing are the wrapped objects': façades of one object are interchangeable.
    def __eq__(self, other: object) -> bool:
        return bool(self.__wrapped__ == _unwrap(other))

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    if not TYPE_CHECKING:  # statically, a declared (subclassed) façade has only what it declares

        def __getattr__(self, name: str) -> Any:
            target = self.__wrapped__
            try:
                value = getattr(target, name)
            except AttributeError:
                raise AttributeError(
                    f"{_name_of(target)!r} object (behind a green façade) has no attribute {name!r}",
                    name=name,
                    obj=target,
                ) from None
            if callable(value) and not isinstance(value, type):
                return _green_callable(value, _describe(target, name))
            return _wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, _unwrap(value))

    def __delattr__(self, name: str) -> None:
        delattr(self.__wrapped__, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped object (a class: construct an instance), by the façade's rules:
        an awaitable result is awaited (a suspension point), async objects come out wrapped."""
        target: Any = self.__wrapped__
        if not callable(target):
            raise TypeError(f"{_name_of(target)!r} object (behind a green façade) is not callable")
        what = f"{target.__qualname__}()" if isinstance(target, type) else _describe(target, "__call__")
        return _call(target, args, kwargs, what)

    def __instancecheck__(self, instance: Any) -> bool:
        target: Any = self.__wrapped__
        return isinstance(_unwrap(instance), target)

    def __subclasscheck__(self, subclass: Any) -> bool:
        target: Any = self.__wrapped__
        return issubclass(_unwrap(subclass), target)

    def __enter__(self) -> Any:
        target: Any = self.__wrapped__
        cls: Any = type(target)
        if hasattr(cls, "__aenter__"):
            if self.__opened:
                # Its __aenter__ would be "return await self", opening it a second time: skip
                # it, as ``async with aiosqlite.connect(...) as conn`` awaits once in all.
                return self
            entered = _await_result(cls.__aenter__(target), _describe(target, "__aenter__"))
        elif hasattr(cls, "__enter__"):
            entered = cls.__enter__(target)
        else:
            raise TypeError(
                f"{cls.__qualname__!r} object (behind a green façade) is not a context manager: "
                f"it has neither __aenter__ nor __enter__"
            )
        # ``async with x as y`` usually binds x itself: keep handing out this façade then.
        return self if entered is target else _wrap(entered)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool | None:
        target: Any = self.__wrapped__
        cls: Any = type(target)
        if hasattr(cls, "__aexit__"):
            what = _describe(target, "__aexit__")
            if not in_green():
                raise NoGreenContext(_no_green_message(f"{what} (through a green façade)"))
            try:
                return await_from_green(cls.__aexit__(target, exc_type, exc, tb))  # type: ignore[no-any-return]
            except BaseException as error:
                if error is not exc:
                    _add_note(error, what)
                raise
        return cls.__exit__(target, exc_type, exc, tb)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Any]:
        target: Any = self.__wrapped__
        cls: Any = type(target)
        if hasattr(cls, "__aiter__"):
            what = _describe(target, "__anext__")
            if not in_green():
                raise NoGreenContext(_no_green_message(f"{what} (through a green façade)"))
            return _iterate(cast(Generator[Any, None, None], iterate(target)), what)
        if hasattr(cls, "__iter__"):
            return map(_wrap, iter(target))
        raise TypeError(
            f"{cls.__qualname__!r} object (behind a green façade) is not iterable: "
            f"it has neither __aiter__ nor __iter__"
        )


if TYPE_CHECKING:

    class _AnyFacade(GreenFacade[T]):
        """What ``green_facade`` returns, to a type checker: every attribute, as ``Any``."""

        def __getattr__(self, name: str) -> Any: ...


def _name_of(target: object) -> str:
    return target.__qualname__ if isinstance(target, type) else type(target).__qualname__


def _describe(target: object, attr: str) -> str:
    """How errors and messages name a wrapped call: ``Cursor.execute()``, ``aiosqlite.connect()``."""
    if isinstance(target, types.ModuleType):
        return f"{target.__name__}.{attr}()"
    return f"{_name_of(target)}.{attr}()"


def _iterate(items: Generator[Any, None, None], what: str) -> Iterator[Any]:
    """Items of a wrapped async iteration, wrapped; errors noted with ``what``."""
    with contextlib.closing(items):
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except BaseException as exc:
                _add_note(exc, what)
                raise
            yield _wrap(item)


def _green_callable(method: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A plain function calling ``method`` by the façade's rules (see ``_call``)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return _call(method, args, kwargs, what)

    # Not functools.wraps: it would copy the coroutine-function marker of an async method.
    call.__name__ = getattr(method, "__name__", "call")
    call.__qualname__ = what[:-2]
    call.__doc__ = getattr(method, "__doc__", None)
    return call


class green_method(Generic[S, P, R]):  # lower case: used like a decorator
    """A typed synchronous method for a declared façade: ``get = gb.green_method(Redis.get)``.

    In the body of a ``GreenFacade[X]`` subclass, ``gb.green_method(X.method)`` -- or any
    ``async def f(obj: X, ...) -> T`` used as a decorator -- makes ``facade.method(...)`` call
    ``method(facade.__wrapped__, ...)`` and return the awaited result: for a type checker,
    ``Callable[Concatenate[X, P], Awaitable[T]]`` becomes ``Callable[P, T]``, so arguments and
    the result are checked. Façades passed as arguments are unwrapped. The result is returned as
    it is, not wrapped (its type is what ``T`` says): wrap an async object that comes out in its
    own declared façade, ``SyncConnection(pool.acquire())``.

    Each call is a suspension (hence cancellation) point; outside green code it raises
    ``NoGreenContext`` without starting the call. Errors keep their type and get a note naming
    the call. Raises ``TypeError`` at once when ``method`` is not callable.
    """

    def __init__(self, method: Callable[Concatenate[S, P], Awaitable[R]], /) -> None:
        if not callable(method):
            raise TypeError(f"gb.green_method() needs an async method, got {type(method).__name__!r}")
        self._method = method
        self.__name__: str = getattr(method, "__name__", "method")
        self.__qualname__: str = getattr(method, "__qualname__", self.__name__)
        self.__doc__ = getattr(method, "__doc__", None)
        self._what = f"{self.__qualname__}()"

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name

    @overload
    def __get__(self, facade: None, owner: type | None = None) -> green_method[S, P, R]: ...
    @overload
    def __get__(self, facade: GreenFacade[Any], owner: type | None = None) -> Callable[P, R]: ...
    def __get__(
        self, facade: GreenFacade[Any] | None, owner: type | None = None
    ) -> green_method[S, P, R] | Callable[P, R]:
        if facade is None:
            return self
        method, what, target = self._method, self._what, facade.__wrapped__

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            unwrapped: Any = map(_unwrap, args)  # façades passed back in: the wrapped objects
            try:
                result = method(target, *unwrapped, **kwargs)
            except BaseException as exc:
                _add_note(exc, what)
                raise
            return cast(R, _await_result(result, what))

        call.__name__ = self.__name__
        call.__qualname__ = self.__qualname__
        call.__doc__ = self.__doc__
        return call


if TYPE_CHECKING:

    def green_facade(obj: T) -> _AnyFacade[T]: ...

else:

    def green_facade(obj):
        """Wrap the async object ``obj`` so that green code uses it synchronously.

        ``db = gb.green_facade(aiosqlite)`` then ``conn = db.connect(":memory:")``,
        ``rows = conn.execute("SELECT 1").fetchall()``, ``with conn: ...``, ``for row in cursor:
        ...``. Coroutine methods (and any method returning an awaitable) are awaited, ``with``
        awaits ``__aenter__`` / ``__aexit__`` (and enters what a ``with`` expression's call
        returns), ``for`` steps ``__anext__``; async objects that come out are wrapped in turn.
        ``obj`` may be a module or a class: what their functions and constructors return comes
        out wrapped. The wrapped object stays reachable as ``facade.__wrapped__``.

        Wrapping never suspends. Each call, ``with`` and iteration step that awaits is a
        suspension (hence cancellation) point; done outside green code it raises
        ``NoGreenContext`` naming the call, without starting the awaitable. Errors propagate with
        their own type and a note naming the wrapped call. Typed façades: ``green_method``.
        """
        if isinstance(obj, GreenFacade):
            return obj
        return GreenFacade(obj)
