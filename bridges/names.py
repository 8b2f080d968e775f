"""TransformerLens component names <-> Hugging Face module names, from the bridge itself.

Nothing here is a table per model: every path is read from the TransformerBridge's
``adapter.component_mapping`` (``blocks`` -> ``model.layers``, ``attn.o`` -> ``o_proj``,
``mlp.out`` -> ``down_proj`` ...), so any architecture TransformerLens supports works.

A *module* is named by its TransformerLens short name:

====== ========================= ===========================
short  TransformerLens path      e.g. Llama / Qwen2 / Gemma3
====== ========================= ===========================
q      blocks.{L}.attn.q         model.layers.{L}.self_attn.q_proj
k      blocks.{L}.attn.k         ...self_attn.k_proj
v      blocks.{L}.attn.v         ...self_attn.v_proj
o      blocks.{L}.attn.o         ...self_attn.o_proj
gate   blocks.{L}.mlp.gate       ...mlp.gate_proj
in     blocks.{L}.mlp.in         ...mlp.up_proj
out    blocks.{L}.mlp.out        ...mlp.down_proj
====== ========================= ===========================
"""

from collections.abc import Sequence
from dataclasses import dataclass

from tlatlas.errors import LayerOutOfRangeError, TlatlasError

MODULES = ("q", "k", "v", "o", "gate", "in", "out")
"""Short names of the linear modules of a block, attention first."""
ATTN_MODULES = ("q", "k", "v", "o")
MLP_MODULES = ("gate", "in", "out")


class UnknownComponentError(TlatlasError, KeyError):
    """A component the architecture does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, kw_only=True)
class ModuleName:
    """One linear module of one layer, in both naming schemes."""

    layer: int
    """Block index."""
    module: str
    """Short name (one of MODULES)."""
    tl_path: str
    """TransformerLens path, e.g. ``blocks.3.attn.o``."""
    hf_path: str
    """Hugging Face module path, e.g. ``model.layers.3.self_attn.o_proj``."""

    @property
    def hf_leaf(self) -> str:
        """The last path component (``o_proj``), what PEFT's short target lists use."""
        return self.hf_path.rsplit(".", 1)[-1]


def _sub(mapping, *keys: str):
    node = mapping
    path = []
    for key in keys:
        subs = node if isinstance(node, dict) else (getattr(node, "submodules", None) or {})
        if key not in subs:
            raise UnknownComponentError(
                f"this architecture has no component {'.'.join([*path, key])!r}; "
                f"it has {', '.join(sorted(subs)) or 'none'}")
        node = subs[key]
        path.append(key)
    return node


def tl_module_path(layer: int, module: str) -> str:
    group = "attn" if module in ATTN_MODULES else "mlp"
    return f"blocks.{layer}.{group}.{module}"


def hf_module_name(bridge, n_layers: int, layer: int, module: str) -> ModuleName:
    """The HF module path of ``module`` (a short name) in block ``layer``."""
    if module not in MODULES:
        raise UnknownComponentError(f"unknown module {module!r}; choose from {', '.join(MODULES)}")
    if not 0 <= layer < n_layers:
        raise LayerOutOfRangeError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    mapping = bridge.adapter.component_mapping
    group = "attn" if module in ATTN_MODULES else "mlp"
    blocks = _sub(mapping, "blocks")
    parts = [blocks.name, str(layer), _sub(blocks, group).name, _sub(blocks, group, module).name]
    return ModuleName(layer=layer, module=module, tl_path=tl_module_path(layer, module),
                      hf_path=".".join(parts))


def hf_module_names(model, layers: Sequence[int] | None = None,
                    modules: Sequence[str] = MODULES) -> list[ModuleName]:
    """Names for every (layer, module) pair, layers outer, modules inner.

    ``model`` is a :class:`tlatlas.models.LoadedModel`.
    """
    layers = range(model.n_layers) if layers is None else layers
    return [hf_module_name(model.bridge, model.n_layers, layer, m) for layer in layers for m in modules]


def module_from_hf(model, hf_path: str) -> ModuleName:
    """The inverse: which layer and short module a Hugging Face path names."""
    for name in hf_module_names(model):
        if name.hf_path == hf_path:
            return name
    raise UnknownComponentError(f"{hf_path!r} is not a linear module of a block of {model.name}")


def leaf_to_short(model, leaf: str) -> str:
    """Map an HF leaf (``o_proj``) or a short name (``o``) to the short name."""
    if leaf in MODULES:
        return leaf
    for m in MODULES:
        try:
            if hf_module_name(model.bridge, model.n_layers, 0, m).hf_leaf == leaf:
                return m
        except UnknownComponentError:
            continue
    raise UnknownComponentError(
        f"{leaf!r} names no block module of {model.name}; short names: {', '.join(MODULES)}")
