"""Argument helpers and tables shared by several commands.

The ``type=`` functions here reject what argparse can check before anything is loaded
(a count below 1, a shard outside its range, a family that does not exist, ``--out``
naming a file where a directory is wanted); each raises ``ArgumentTypeError`` so the
user sees one ``tlatlas: error: ...`` line (:class:`Parser`).
"""

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

SUITES = ("synthetic", "nl")
DEFAULT_SUITE_SEED = 42  # tlatlas.tasks.DEFAULT_SEED; not imported, so --help stays fast
SUITE_SIZE = "the whole suite: ~358 per family synthetic, ~208 nl"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``tlatlas: error: ...`` (exit 2).

    Subparsers made by ``add_subparsers`` are of the parent's class, so every command
    gets it.
    """

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tlatlas").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"tlatlas: error: {where}{message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wider option column, so the help of a long option starts on its own line less often."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


# --- type= functions ----------------------------------------------------------------


def _number(kind: Callable[[str], float], text: str, what: str, ok: Callable[[float], bool]):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"wants {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count: a whole number >= 1."""
    return _number(int, text, "a whole number >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (a layer, a step count, a number of random draws)."""
    return _number(int, text, "a whole number >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """A number > 0 (a learning rate)."""
    return _number(float, text, "a number > 0", lambda v: v > 0 and v != float("inf"))


def non_negative_float(text: str) -> float:
    """A number >= 0 (a ridge strength)."""
    return _number(float, text, "a number >= 0", lambda v: 0 <= v != float("inf"))


AUTO_BATCH = 0
"""What ``--batch-size auto`` parses to (``AtlasConfig(batch_size=0)``: chosen from the
memory budget)."""


def batch_size_or_auto(text: str) -> int:
    """``auto`` (:data:`AUTO_BATCH`) or a batch of at least 2 examples (resample ablation
    draws each example's donor from its batch)."""
    if text.strip().lower() == "auto":
        return AUTO_BATCH
    return _number(int, text, "auto or a whole number >= 2", lambda v: v >= 2)


MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
"""Units ``memory_size`` reads (case does not matter): decimal kB/MB/GB/TB, binary
KiB/MiB/GiB/TiB, bytes with ``B`` or no unit."""
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def memory_size(text: str) -> int:
    """A number of bytes > 0: ``2GiB``, ``1.5GiB``, ``500MB``, ``1073741824`` (bytes)."""
    what = f"a size > 0 such as 2GiB, 500MB or 1073741824 (bytes), got {text!r}"
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in MEMORY_UNITS):
        raise argparse.ArgumentTypeError(f"wants {what}")
    number = match.group(1)
    if unit in ("", "b"):  # whole bytes only
        if not number.isdigit():
            raise argparse.ArgumentTypeError(f"wants whole bytes or a unit: {what}")
        size = int(number)
    else:
        size = int(float(number) * MEMORY_UNITS[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(f"wants {what}")
    return size


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units, e.g. ``1.0 GiB``, ``512.0 MiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def shard(text: str) -> tuple[int, int]:
    """``i/n``: the i-th of n disjoint slices, 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"wants i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def family(text: str) -> str:
    """A registered task family."""
    from tlatlas.tasks import FAMILIES

    if text not in FAMILIES:
        raise argparse.ArgumentTypeError(
            f"unknown task family {text!r}; known: {', '.join(FAMILIES)}")
    return text


def family_or_any(text: str) -> str:
    """A registered task family, or ``any`` (all of them)."""
    return text if text == "any" else family(text)


def device(text: str) -> str:
    """A torch device string: ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"wants a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def _first_existing(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def output_dir(text: str) -> str:
    """A directory to write into: it may exist (as a directory) or not yet."""
    path = Path(text)
    found = _first_existing(path)
    if found is not None and not found.is_dir():
        what = "is an existing file" if found == path else f"is below the file {found}"
        raise argparse.ArgumentTypeError(f"{text} {what}; --out wants a directory")
    return text


def output_file(text: str) -> str:
    """A file to (over)write: not an existing directory, and no file in the way above it."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; --out wants a file name")
    found = _first_existing(path.parent)
    if found is not None and not found.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is below the file {found}; --out wants a file name")
    return text


# --- shared arguments -----------------------------------------------------------------


class _DeprecatedNL(argparse.Action):
    """``--nl``: the old spelling of ``--suite nl``, kept for old command lines (hidden)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("tlatlas: warning: --nl is deprecated; use --suite nl", file=sys.stderr)
        setattr(namespace, self.dest, "nl")


def add_suite_args(p: argparse.ArgumentParser, *, per_family_default: int | None = None,
                   per_family_help: str = "examples per family (a stratified sample)",
                   families_help: str = "restrict to these families", seed: bool = True
                   ) -> None:
    """``--suite``, ``--seed`` (unless ``seed=False``: the command has ``--seeds``),
    ``--per-family`` and ``--families``: one spelling everywhere."""
    p.add_argument("--suite", choices=SUITES, default="synthetic",
                   help="which task suite: synthetic templates or natural-language "
                        "prompts (default synthetic)")
    p.add_argument("--nl", dest="suite", action=_DeprecatedNL, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    if seed:
        p.add_argument("--seed", type=int, default=DEFAULT_SUITE_SEED, metavar="SEED",
                       help="suite seed: which examples are drawn "
                            f"(default {DEFAULT_SUITE_SEED})")
    add_per_family(p, per_family_default, per_family_help)
    add_families(p, families_help)


def add_per_family(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    shown = f"default {default}" if default is not None else f"default: {SUITE_SIZE}"
    p.add_argument("--per-family", type=positive_int, default=default, metavar="N",
                   help=f"{help}; >= 1 ({shown})")


def add_families(p: argparse.ArgumentParser, help: str, default=None) -> None:
    from tlatlas.tasks import FAMILIES

    shown = "all of them" if default is None else " ".join(default)
    p.add_argument("--families", type=family, nargs="+", default=default, metavar="FAMILY",
                   help=f"{help}: one or more of {' '.join(FAMILIES)} (default: {shown})")


def add_model_arg(p: argparse.ArgumentParser, default: str | None = "smollm2-135m",
                  help: str | None = None) -> None:
    p.add_argument("--model", default=default, metavar="NAME",
                   help=help or "a registered name (`tlatlas models`), a local checkpoint "
                                f"directory or a cached hub id (default {default})")


def add_batch_size(p: argparse.ArgumentParser, default: int, what: str = "examples") -> None:
    p.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                   help=f"{what} per forward pass (default {default})")


def add_memory_batching(p: argparse.ArgumentParser, default: int) -> None:
    """``--batch-size auto|N`` and ``--memory-budget SIZE`` of a sweep that can choose its
    batch from a memory budget (:mod:`tlatlas.atlas.batching`)."""
    p.add_argument("--batch-size", type=batch_size_or_auto, default=default, metavar="auto|N",
                   help="examples per forward pass, >= 2; auto: the largest batch (per "
                        "family) that the memory budget allows, halved and retried if a "
                        f"batch still runs out of memory (default {default})")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="memory --batch-size auto may plan for, e.g. 2GiB, 500MB or bytes "
                        "(default: 80%% of the device's free memory once the model is "
                        "loaded)")


def suite_from_args(args: argparse.Namespace, per_family: int | None = None, *,
                    seed: int | None = None):
    """The suite ``--suite/--seed/--per-family/--families`` name (library errors raise)."""
    from tlatlas.tasks import build_suite

    return build_suite(args.suite, seed=args.seed if seed is None else seed,
                       per_family=args.per_family if per_family is None else per_family,
                       families=list(args.families) if args.families else None)


def fail(message: str) -> NoReturn:
    """Stop with one ``tlatlas: error:`` line (an input error the library cannot see)."""
    from tlatlas.errors import InvalidInputError

    raise InvalidInputError(message)


def atlas_stems(path: str) -> list:
    """The atlases ``path`` names: every atlas in a directory (sorted), or one atlas given by
    its stem or either of its files."""
    from pathlib import Path

    from tlatlas.atlas.store import META_SUFFIX, atlas_paths, find_atlases

    if Path(path).is_dir():
        return find_atlases(path)
    _, meta = atlas_paths(path)
    if meta.is_file():
        return [Path(str(meta)[: -len(META_SUFFIX)])]
    fail(f"{path} is not a directory, nor an atlas ({meta} does not exist)")


def atlas_stem(path: str):
    """The one atlas ``path`` names: its stem or a file of it, or a directory holding exactly
    one atlas (``tlatlas atlas --out`` of one seed); several say which to name."""
    from pathlib import Path

    if not Path(path).is_dir():
        return path  # load_atlas names a missing or broken file itself
    stems = atlas_stems(path)
    if len(stems) == 1:
        return stems[0]
    if not stems:
        fail(f"{path} is a directory with no atlas (*.atlas.json) in it")
    fail(f"{path} holds {len(stems)} atlases ({', '.join(s.name for s in stems)}); name one, "
         f"e.g. {stems[0]}")


@contextmanager
def warnings_as_lines(*categories: type[Warning]) -> Iterator[None]:
    """While the block runs, show each warning of ``categories`` (every time it is issued)
    as one ``tlatlas: warning: ...`` line on stderr, above any progress bar; other
    warnings are shown as before."""
    from tqdm import tqdm

    with warnings.catch_warnings():
        for category in categories:
            warnings.simplefilter("always", category)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, categories):
                tqdm.write(f"tlatlas: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def run_bar(total: int | None, desc: str):
    """A progress bar of whole runs (a study's fine-tunes) and the ``on_run`` that drives it.

    ``on_run(what)`` is called as each run starts: the previous run is then done.
    Close the bar with ``finish()``.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr)
    started = [False]

    def on_run(what: str) -> None:
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(what)

    def finish() -> None:
        if started[0]:
            bar.update(1)
        if bar.total is not None and bar.n != bar.total:  # some runs were skipped
            bar.total = bar.n
            bar.refresh()
        bar.close()

    return bar, on_run, finish


# --- tables -------------------------------------------------------------------------


def hub_table(entries: list[dict]) -> None:
    """Print one row per seed (hub, P(hub), margin and agreement with 95% CIs, the least
    important layer), the spread across seeds (only for two or more), and what the
    effects rest on: examples and the clean model's accuracy per family."""
    from tlatlas.atlas.hubs import spread_of

    print(f"{'seed':>6} {'n':>5} {'hub':>4} {'P(hub)':>7} {'margin over runner-up [95% CI]':>38} "
          f"{'agreement [95% CI]':>20} {'least':>6}")
    for e in entries:
        layers, effect = e["layers"], e["layer_effect"]["estimate"]
        least = layers[min(range(len(effect)), key=effect.__getitem__)]
        if e["hub_probability"] is None:
            print(f"{e['seed']:>6} {e['n_examples']:>5} {e['hub_layer']:>4} {'n/a':>7} "
                  f"{'n/a (no per-example effects)':>38} "
                  f"{e['family_agreement']['estimate']:>8.0%} (no CI) {least:>6}")
            continue
        p = e["hub_probability"][layers.index(e["hub_layer"])]
        m, a = e["hub_margin"], e["family_agreement"]
        margin = f"{m['estimate']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] over L{e['runner_up']}"
        agree = f"{a['estimate']:.0%} [{a['ci'][0]:.0%}, {a['ci'][1]:.0%}]"
        print(f"{e['seed']:>6} {e.get('n_used', e['n_examples']):>5} {e['hub_layer']:>4} "
              f"{p:>7.2f} {margin:>38} {agree:>20} {least:>6}")
    first = entries[0]
    if len(entries) > 1:
        spread = spread_of([e["seed"] for e in entries], [e["hub_layer"] for e in entries],
                           [e["family_agreement"]["estimate"] for e in entries])
        print(f"hub per seed {list(spread.hubs)}  mode L{spread.mode}  std {spread.std:.2f}")
    else:
        print("one seed: no spread across seeds (P(hub) and the intervals are over examples)")
    print(f"metric {first['metric']}, component {first['component']}, positions ablated "
          f"{first['positions_ablated']} (kl and dlogp in nats); 95% CIs: stratified bootstrap "
          "over examples")
    if first.get("note"):
        print(f"note: {first['note']}")
    for e in entries:
        for f, why in e["excluded_families"].items():
            print(f"seed {e['seed']}: {f} left out of the hub ({why})")
    clean = first["clean"]
    print("clean top-1 accuracy, n scored (first seed): " + ", ".join(
        f"{f} {c['accuracy']:.0%} n={c['scored']}" for f, c in clean.items()))
    weak = [f for f, c in clean.items() if c["accuracy"] < 0.5]
    if weak:
        print(f"  the model answers {', '.join(weak)} mostly wrong: their effects are effects "
              "on failures (--correct-only scores only what it answers right)")
    print("per-family argmax (first seed): " + ", ".join(
        f"{f} L{layer}" for f, layer in first["family_argmax"].items()))


def role_table(sums, metric: str) -> None:
    """Effect of ablating one position of each role, per layer (position bias)."""
    import torch

    from tlatlas.atlas.sums import role_effect
    from tlatlas.tokens import ROLES

    missing = False
    for comp in ("resid", "block"):
        eff = role_effect(sums, metric, comp)  # [layer role]; NaN: not exact, no estimate
        known = ~torch.isnan(eff)
        missing |= not bool(known.all())
        means = [f"{r} {float(eff[:, i].mean()):.3f}" if known[:, i].all() else f"{r} n/a"
                 for i, r in enumerate(ROLES)]
        print(f"position roles, {comp} ablated at one position ({metric}, mean over layers): "
              + ", ".join(means))
        masked = torch.where(known, eff, -torch.inf)
        top = [f"{r} L{sums.layers[int(masked[:, i].argmax())]}" if known[:, i].any() else
               f"{r} n/a" for i, r in enumerate(ROLES)]
        print("  layer of largest effect per role: " + ", ".join(top))
    if missing:
        print(f"  n/a: cells of that role are not all exact and the estimate gives no {metric}"
              " (estimate then verify); largest effects are over the layers that have one")
