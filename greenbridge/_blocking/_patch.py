"""What installing and removing one patch means: ``apply()`` and ``revert()``, nothing else."""

from __future__ import annotations

from typing import Protocol

__all__ = ("Attribute", "Patch")

_MISSING = object()


class Patch(Protocol):
    def apply(self) -> None: ...
    def revert(self) -> None: ...


class Attribute:
    """Replace ``owner.name`` (a module's function, a class's method); ``revert`` puts back what
    was there, or removes the attribute when it was inherited (a C base class's method)."""

    __slots__ = ("name", "owner", "replacement", "saved")

    def __init__(self, owner: object, name: str, replacement: object) -> None:
        self.owner = owner
        self.name = name
        self.replacement = replacement
        self.saved: object = _MISSING

    def apply(self) -> None:
        self.saved = vars(self.owner).get(self.name, _MISSING)
        setattr(self.owner, self.name, self.replacement)

    def revert(self) -> None:
        if self.saved is _MISSING:
            delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.saved)
        self.saved = _MISSING
