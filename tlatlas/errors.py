"""Exceptions the library raises. Each message names the fix where there is one."""


class TlatlasError(Exception):
    """Base class for every error tlatlas raises on purpose."""


class UnknownModelError(TlatlasError, KeyError):
    """A model name that is neither registered, nor a local path, nor a cached hub id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelNotAvailableError(TlatlasError):
    """A known model whose weights are not on this machine (package missing, not cached)."""


class CorruptModelFileError(TlatlasError):
    """A model file that exists but cannot be read (truncated, wrong format)."""


class FingerprintMismatchError(TlatlasError):
    """An atlas or result used with a model other than the one that produced it."""


class LayerOutOfRangeError(TlatlasError, IndexError):
    """A layer index outside ``0 .. n_layers - 1``."""


class AtlasFileError(TlatlasError):
    """An atlas file that is missing, truncated, of another version, or of the wrong shape."""


class InvalidInputError(TlatlasError, ValueError):
    """An argument or input the library cannot work with (a count below 1, an empty suite,
    an unknown choice, shapes that do not match). Also a ValueError, so callers that
    catch ValueError keep working."""


class UnknownNameError(TlatlasError, KeyError):
    """A name that is not registered or not present (a family, a hook point, a relation)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OutOfRangeError(TlatlasError, IndexError):
    """An index outside its range (a position, a start layer, a block to skip)."""
