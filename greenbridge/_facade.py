"""Green façades: a synchronous view of an async object, for green code (SQLAlchemy's pattern).

SQLAlchemy runs its synchronous ORM over asyncio drivers by wrapping each driver object in a
hand-written adapter whose methods call ``await_(driver.method(...))``. ``green_facade`` makes
that adapter for any object, by one rule applied everywhere:

* **Calls.** ``facade.method(*args, **kwargs)`` calls ``target.method(*args, **kwargs)``; a result
  that is awaitable (a coroutine, a Future, anything with ``__await__``) is awaited with
  ``await_from_green``. So ``async def`` methods, and methods returning awaitables such as
  aiosqlite's ``Connection.execute`` or aiohttp's ``ClientSession.get``, become plain calls.
* **Context managers.** ``with facade as value:`` awaits ``__aenter__`` / ``__aexit__``
  (or uses ``__enter__`` / ``__exit__`` when the target only has those).
* **Iteration.** ``for item in facade:`` steps ``__aiter__`` / ``__anext__`` (or ``__iter__``).
* **Wrapping.** Every value coming out -- a call's result, an attribute, the value ``with``
  binds, an item -- that is itself an *async object* (its type has an ``async def`` method, an
  async generator method, ``__aenter__``, ``__aiter__`` or ``__anext__``) comes out wrapped in a
  façade of its own, so chains work: ``db.connect(path).execute(sql).fetchall()``. Classes and
  everything else come out unchanged (``except facade.Error`` still catches).
* **Errors.** An exception keeps its type (``except sqlite3.OperationalError`` still works) and
  gets a note naming the wrapped call, e.g. ``greenbridge façade: raised by Cursor.execute()``.

The guide, with executed examples, is docs/facades.md.

Rejected design: deciding "is this a coroutine method" from ``inspect.iscoroutinefunction`` on
the attribute alone. Drivers wrap their coroutine methods (aiosqlite's ``execute`` is a plain
function returning an awaitable ``Result``), so the result is what decides.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from ._adapters import iterate
from ._core import _no_green_message, await_from_green, in_green
from ._errors import NoGreenContext

__all__ = ("GreenFacade", "green_facade")

T = TypeVar("T")

_NOTE_PREFIX = "greenbridge façade: raised by "

# type -> whether its instances are async objects (see the module docstring). Weak, so that
# classes created on the fly can still be collected.
_async_types: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()

_ASYNC_DUNDERS = ("__aenter__", "__aiter__", "__anext__")


def _is_async_type(cls: type) -> bool:
    try:
        return _async_types[cls]
    except KeyError:
        pass
    except TypeError:  # a type that cannot be weakly referenced: decide, do not cache
        return _scan_async_type(cls)
    found = _async_types[cls] = _scan_async_type(cls)
    return found


def _scan_async_type(cls: type) -> bool:
    if any(hasattr(cls, name) for name in _ASYNC_DUNDERS):
        return True
    if cls.__module__ == "builtins":  # coroutines are awaited, not wrapped; the rest is sync
        return False
    for klass in cls.__mro__:
        for attr in vars(klass).values():
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
                return True
    return False


def _wrap(value: Any, *, opened: bool = False) -> Any:
    """``value`` in a façade when it is an async object (not a class, not already a façade);
    ``opened``: awaiting ``value`` returned ``value`` itself (see ``GreenFacade.__enter__``)."""
    cls = type(value)
    if cls is GreenFacade or isinstance(value, type) or not _is_async_type(cls):
        return value
    facade = GreenFacade(value)
    if opened:
        object.__setattr__(facade, "_GreenFacade__opened", True)
    return facade


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


class GreenFacade(Generic[T]):
    """A synchronous view of the async object ``__wrapped__``, for green code.

    Made by ``green_facade(obj)``; see the ``greenbridge._facade`` module docstring for the
    rules. Attribute reads go to the wrapped object (async objects among them come out wrapped,
    methods come out as plain functions), attribute writes go to it unchanged; equality, hashing
    and ``dir()`` are the wrapped object's, other operators are not forwarded. Statically,
    attributes are ``Any``: to type a façade, describe its synchronous interface in a
    ``typing.Protocol`` and ``cast`` to it.
    """

    __slots__ = ("__opened", "__weakref__", "__wrapped__")

    __wrapped__: T
    # True when this façade's object came from awaiting itself, the "open" idiom
    # (``conn = await aiosqlite.connect(...)``): it is open already, see __enter__.
    __opened: bool

    def __init__(self, target: T) -> None:
        object.__setattr__(self, "__wrapped__", target)
        object.__setattr__(self, "_GreenFacade__opened", False)

    def __repr__(self) -> str:
        return f"<green façade of {self.__wrapped__!r}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self.__wrapped__)) | {"__wrapped__"})

    # Each access makes a fresh façade (``conn.cursor_attr is conn.cursor_attr`` is false), so
    # equality and hashing are the wrapped objects': façades of one object are interchangeable.
    def __eq__(self, other: object) -> bool:
        if type(other) is GreenFacade:
            other = other.__wrapped__
        return bool(self.__wrapped__ == other)

    def __hash__(self) -> int:
        return hash(self.__wrapped__)

    def __getattr__(self, name: str) -> Any:
        target = self.__wrapped__
        try:
            value = getattr(target, name)
        except AttributeError:
            raise AttributeError(
                f"{type(target).__qualname__!r} object (behind a green façade) has no attribute {name!r}",
                name=name,
                obj=target,
            ) from None
        if callable(value) and not isinstance(value, type):
            return _green_method(value, _describe(target, name))
        return _wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.__wrapped__, name)

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
            return _iterate(iterate(target), what)
        if hasattr(cls, "__iter__"):
            return map(_wrap, iter(target))
        raise TypeError(
            f"{cls.__qualname__!r} object (behind a green façade) is not iterable: "
            f"it has neither __aiter__ nor __iter__"
        )



def _describe(target: object, attr: str) -> str:
    """How errors and messages name a wrapped call: ``Cursor.execute()``, ``aiosqlite.connect()``."""
    if isinstance(target, types.ModuleType):
        return f"{target.__name__}.{attr}()"
    return f"{type(target).__qualname__}.{attr}()"


def _iterate(items: Iterator[Any], what: str) -> Iterator[Any]:
    """Items of a wrapped async iteration, wrapped; errors noted with ``what``."""
    with _closing(items):
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except BaseException as exc:
                _add_note(exc, what)
                raise
            yield _wrap(item)


class _closing:
    """Close a generator on exit (``contextlib.closing`` is typed for objects with ``close``)."""

    __slots__ = ("_gen",)

    def __init__(self, gen: Iterator[Any]) -> None:
        self._gen = gen

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()


def _green_method(method: Callable[..., Any], what: str) -> Callable[..., Any]:
    """A plain function calling ``method`` and awaiting its result when that is awaitable."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except BaseException as exc:
            _add_note(exc, what)
            raise
        value = _await_result(result, what)
        return _wrap(value, opened=value is result)

    # Not functools.wraps: it would copy the coroutine-function marker of an async method.
    call.__name__ = getattr(method, "__name__", "call")
    call.__qualname__ = what[:-2]
    call.__doc__ = getattr(method, "__doc__", None)
    return call


def green_facade(obj: T) -> GreenFacade[T]:
    """Wrap the async object ``obj`` so that green code uses it synchronously.

    ``db = gb.green_facade(aiosqlite)`` then ``conn = db.connect(":memory:")``,
    ``rows = conn.execute("SELECT 1").fetchall()``, ``with conn: ...``, ``for row in cursor: ...``.
    Coroutine methods (and any method returning an awaitable) are awaited, ``with`` awaits
    ``__aenter__`` / ``__aexit__``, ``for`` steps ``__anext__``; async objects that come out are
    wrapped in turn. The wrapped object stays reachable as ``facade.__wrapped__``.

    Wrapping never suspends. Each call, ``with`` and iteration step that awaits is a suspension
    (hence cancellation) point; done outside green code it raises ``NoGreenContext`` naming the
    call, without starting the awaitable. Errors propagate with their own type and a note naming
    the wrapped call. Raises ``TypeError`` at once when ``obj`` is a class (wrap an instance).
    """
    if isinstance(obj, type):
        raise TypeError(
            f"gb.green_facade() wraps objects, got the class {obj.__qualname__!r}: wrap an instance"
        )
    if type(obj) is GreenFacade:
        return cast(GreenFacade[T], obj)
    return GreenFacade(obj)
