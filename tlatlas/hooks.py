"""Scoped TransformerLens hooks: attach for a block, then remove exactly what was added.

A hook is a TransformerLens forward hook ``fn(activation, hook) -> activation`` on a
hook point of the bridge (``blocks.{L}.hook_attn_out`` and friends). Every intervention
tlatlas makes (ablation, patching, steering, caching) goes through :func:`hooks_attached`,
which removes its own handles in ``finally`` and leaves every other hook on the bridge
(a user's steering hook, a caching hook of an outer context) in place.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor

from tlatlas.errors import UnknownNameError

HookFn = Callable[[Tensor, object], Tensor]


def hook_name(layer: int, hook: str) -> str:
    """The TransformerLens name of a per-layer hook point, e.g. ``blocks.3.hook_mlp_out``."""
    return f"blocks.{layer}.{hook}"


@contextmanager
def hooks_attached(bridge, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block.

    Each hook is added to its ``HookPoint`` directly (one call per activation, never once
    per compatibility alias) and its handle removed on exit, whatever happens inside;
    hooks attached by anyone else stay attached.

    Raises:
        KeyError: a name that is not a hook point of ``bridge``.
    """
    points = bridge.hook_dict
    unknown = [name for name, _ in fwd_hooks if name not in points]
    if unknown:
        raise UnknownNameError(f"no such hook point(s): {', '.join(unknown)}")
    added = []
    try:
        for name, fn in fwd_hooks:
            point = points[name]
            added.append((point, point.add_hook(fn, dir="fwd")))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks[:] = [h for h in point.fwd_hooks if h is not handle]
