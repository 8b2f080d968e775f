"""Per-position ablation maps as circuitsvis components, rendered offline.

circuitsvis's own ``render`` returns an object whose ``_repr_html_`` probes the internet
(and whose ``str`` loads the script from a CDN). Here the bundled browser script that
ships inside the circuitsvis wheel (``circuitsvis/dist/cdn/iife.js``) is inlined instead,
once per page, and each map is a ``<div>`` plus a call to ``CircuitsVis.render``: the
page needs no network.

The component is circuitsvis's ``TextNeuronActivations``: several prompts at once, each
token coloured by its effect, with a **layer selector** (its first dimension) and a
second selector over the maps given (e.g. ``resid`` and ``block``).
"""

import html
import json
import uuid
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from tlatlas.atlas.posmap import PositionMap
from tlatlas.errors import InvalidInputError

MOUNT_CLASS = "tlatlas-circuitsvis"
"""CSS class of every ``<div>`` a circuitsvis component mounts into."""


def circuitsvis_bundle_path() -> Path:
    """The browser bundle inside the installed circuitsvis package."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(f"circuitsvis bundle not found at {path}; reinstall circuitsvis")
    return path


@lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """The bundle's JavaScript, safe to inline in a ``<script>`` element.

    Drops the ``sourceMappingURL`` comment (a file the page cannot reach) and any
    ``</script>`` sequence (it would close the inline element early).
    """
    js = circuitsvis_bundle_path().read_text(encoding="utf-8")
    lines = [ln for ln in js.splitlines() if not ln.startswith("//# sourceMappingURL=")]
    return "\n".join(lines).replace("</script>", "<\\/script>")


def script_element() -> str:
    """``<script>`` with the whole circuitsvis bundle (defines ``window.CircuitsVis``)."""
    return f"<script>\n{circuitsvis_script()}\n</script>"


def _props(maps: Sequence[PositionMap]) -> dict:
    first = maps[0]
    for m in maps[1:]:
        if m.tokens != first.tokens or m.layers != first.layers:
            raise InvalidInputError("maps shown together need the same prompts and layers")
    activations = []
    for i in range(len(first.tokens)):
        # [tok layer map]: circuitsvis wants tokens x first dimension x second dimension
        per_map = [m.prompt_effect(i).T.tolist() for m in maps]  # each [tok][layer]
        activations.append([[[pm[t][li] for pm in per_map] for li in range(len(first.layers))]
                            for t in range(len(first.tokens[i]))])
    return {
        "tokens": [list(t) for t in first.tokens],
        "activations": activations,
        "firstDimensionName": "Layer",
        "secondDimensionName": "Map",
        "firstDimensionLabels": [f"L{layer}" for layer in first.layers],
        "secondDimensionLabels": [f"{m.component} {m.ablation} {m.metric}" for m in maps],
    }


def map_element(maps: PositionMap | Sequence[PositionMap], *, element_id: str | None = None) -> str:
    """A ``<div>`` and the script that mounts the map into it.

    The page must already hold :func:`script_element` (the bundle) above this element.
    Several maps over the same prompts and layers share one component (a selector).
    """
    maps = [maps] if isinstance(maps, PositionMap) else list(maps)
    if not maps:
        raise InvalidInputError("no position map to show")
    element_id = element_id or "circuits-vis-" + uuid.uuid4().hex[:12]
    props = json.dumps(_props(maps), allow_nan=False).replace("</", "<\\/")
    caption = (f"Effect on the scored token ({maps[0].metric}) of {maps[0].ablation}-ablating "
               "one position at a time; pick a layer, hover a token for its value.")
    return (f'<p class="caption">{html.escape(caption)}</p>\n'
            f'<div id="{element_id}" class="{MOUNT_CLASS}" style="margin: 15px 0;"></div>\n'
            f"<script>CircuitsVis.render({json.dumps(element_id)}, "
            f"CircuitsVis.TextNeuronActivations, {props});</script>")


class MapView:
    """A map for notebooks: ``_repr_html_`` inlines the bundle (no internet probe)."""

    def __init__(self, maps: PositionMap | Sequence[PositionMap]) -> None:
        self.maps = maps

    def _repr_html_(self) -> str:
        return script_element() + "\n" + map_element(self.maps)


def show_map(maps: PositionMap | Sequence[PositionMap]) -> MapView:
    """Display a position map in Jupyter (the last expression of a cell), offline."""
    return MapView(maps)
