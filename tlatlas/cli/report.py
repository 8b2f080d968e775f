"""`tlatlas report RUN_DIR --out report.html`: one self-contained HTML page of a run."""

import argparse
import sys

from tlatlas.cli.common import non_negative_int, output_file, positive_int


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from tlatlas.viz.report import build_report, write_report

    loaded: dict[str, object] = {}

    def position_maps_for(atlas):
        from tlatlas.atlas.posmap import atlas_position_maps
        from tlatlas.models import load_model

        name = args.model or atlas.meta.model
        if name not in loaded:
            print(f"loading {name} for the per-prompt position map", file=sys.stderr)
            loaded[name] = load_model(name)
        model = loaded[name]
        # the first example of each of the first --prompts families (two under resample)
        n_families = min(max(1, args.prompts), len(atlas.sums.families))
        total = n_families * (2 if atlas.meta.ablation == "resample" else 1)
        with tqdm(total=total, desc="position map", unit="prompt", file=sys.stderr) as bar:
            return atlas_position_maps(model, atlas, n_prompts=args.prompts,
                                       layers=args.map_layers, on_batch=bar.update)

    page = build_report(args.run_dir, command=args.command_line,
                        position_maps_for=None if args.no_model else position_maps_for)
    out = Path(args.out) if args.out else Path(args.run_dir) / "report.html"
    path = write_report(out, page)
    print(f"report: {path.resolve()}  ({len(page) / 1e6:.1f} MB, open it in a browser; "
          "it needs no network)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="self-contained HTML report of an atlas, steering or "
                                      "experiments directory",
                       description="One self-contained HTML page (no network needed) of an "
                                   "atlas, steering, study or experiments directory.")
    p.add_argument("run_dir", help="a directory holding atlases, steering results or JSON results")
    p.add_argument("--out", type=output_file, default=None, metavar="FILE",
                   help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--no-model", action="store_true",
                   help="skip the per-prompt position map (it loads the atlas's model)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="model for the position map (default: the one the atlas records)")
    p.add_argument("--prompts", type=positive_int, default=4, metavar="N",
                   help="prompts in the position map, one per family of the atlas's first N "
                        "families (default 4)")
    p.add_argument("--map-layers", type=non_negative_int, nargs="+", default=None, metavar="L",
                   help="layers of the position map, 0-based (default: up to 10 evenly "
                        "spaced layers of the atlas, plus its hub)")
    p.set_defaults(func=cmd_report)
