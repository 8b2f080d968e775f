"""The report in a real browser: headless Chromium, network cut off.

Checks that the circuitsvis component mounted (its DOM is present and holds the prompt's
tokens and the layer selector) and that the screenshot is not blank. Skips only when no
Chromium binary exists (``.ci/run`` installs Debian's ``chromium``).
"""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.posmap import atlas_position_maps
from tlatlas.atlas.store import save_atlas

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium binary on PATH (tried " + ", ".join(BROWSERS) + "); install Debian's "
                "`chromium` package (`apt-get install -y chromium`, as .ci/run does)")


def run_chromium(args: list[str], profile: Path, *, timeout: int = 180) -> subprocess.CompletedProcess:
    """Headless Chromium that cannot reach any host (every name resolves to nothing)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def screenshot(page: Path, png: Path, profile: Path, *, size: str = "1280,2400") -> Path:
    run_chromium([f"--window-size={size}", f"--screenshot={png}", page.resolve().as_uri()],
                 profile)
    return png


class MountedComponents(HTMLParser):
    """Text and element count inside each ``div.tlatlas-circuitsvis`` of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 while inside a mount div
        self.mounts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if self.depth:
            self.mounts[-1]["elements"] += 1
            if tag not in ("br", "img", "input", "meta", "hr"):
                self.depth += 1
        elif tag == "div" and "tlatlas-circuitsvis" in (dict(attrs).get("class") or ""):
            self.mounts.append({"elements": 0, "text": []})
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.mounts[-1]["text"].append(data)


@pytest.fixture(scope="module")
def report(tiny_models, tmp_path_factory):
    from tlatlas.viz.report import build_report, write_report

    model = tiny_models["llama"]
    root = tmp_path_factory.mktemp("browser")
    atlas = build_atlas(model, SuiteSpec(per_family=1, families=("json", "ioi")),
                        AtlasConfig(positions=True, max_offset=48), command="tlatlas atlas (test)")
    save_atlas(atlas, root / "atlas" / "seed42")
    maps = {}

    def maps_for(a):
        maps["m"] = atlas_position_maps(model, a, n_prompts=2, layers=[0, 2])
        return maps["m"]

    page = build_report(root / "atlas", command="tlatlas report (browser test)",
                        position_maps_for=maps_for)
    return write_report(root / "report.html", page), maps["m"]


def test_circuitsvis_mounts_offline_and_page_is_not_blank(report, tmp_path):
    page, maps = report
    dom = run_chromium(["--dump-dom", page.resolve().as_uri()], tmp_path / "profile").stdout
    parser = MountedComponents()
    parser.feed(dom)
    assert len(parser.mounts) == 1, "the circuitsvis mount point is missing from the DOM"
    mount = parser.mounts[0]
    text = "".join(mount["text"])
    assert mount["elements"] > 20, f"circuitsvis did not render into its div: {mount}"
    assert "Layer" in text and "L2" in text  # the layer selector and its labels
    words = [t.strip() for t in maps[0].tokens[0] if len(t.strip()) > 2]
    assert words and all(w in text for w in words[:5]), "the prompt's tokens are not shown"

    png = screenshot(page, tmp_path / "shot.png", tmp_path / "profile2")
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]  # floats in [0, 1]
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    not_white = (img < 0.95).any(-1)
    assert not_white.mean() > 0.05, "the screenshot is (almost) blank"
    assert float(np.std(img)) > 0.05
    # colour, not only text: the heatmaps (and coloured tokens) are drawn
    saturation = img.max(-1) - img.min(-1)
    assert (saturation > 0.3).mean() > 0.01
