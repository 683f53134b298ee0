"""Weights that never see the image: the share of conv weights whose taps only ever multiply zero padding.

For both rfpool families (k = 1..4, full width and the studies' 1/16 width with one grey channel) and a few stock
timm CNNs, at 32 and 64 px (and 224 for the stock nets): the dead share of conv weights
(``rf_bench.rf.dead_weight_share``), the border layer (the first conv or pool whose RF exceeds the input) and the
analytic RF. Exact, from the traced geometry; no weights are trained.

    python benchmarks/live_weights.py          # results/live_weights.{json,md}
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import timm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rf_bench  # noqa: E402,F401  (registers the rfpool models)
from _common import write_result  # noqa: E402
from rf_bench.rf import border_layer, dead_weight_share, layer_receptive_fields, receptive_field  # noqa: E402

FAMILIES = ("vgg19_rfpool", "resnet50_rfpool")
VARIANTS = (("full width, 3 channels", {}, 3), ("1/16 width, 1 channel", dict(width_mult=0.0625, in_chans=1), 1))
STOCK = ("resnet18", "efficientnet_b0", "convnext_atto")


def measure(model_name: str, kwargs: Dict[str, Any], channels: int, sizes: Sequence[int]) -> Dict[str, Any]:
    model = timm.create_model(model_name, **kwargs)
    row: Dict[str, Any] = dict(model=model_name, kwargs=kwargs, rf=receptive_field(model, (channels, 256, 256)).size)
    for size in sizes:
        input_size = (channels, size, size)
        row[f"dead_{size}"] = dead_weight_share(model, input_size)
        row[f"border_{size}"] = border_layer(layer_receptive_fields(model, input_size), input_size)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["**Share of conv weights that never see the image** (exact, from the traced geometry)", "",
             "| model | variant | RF | dead at 32 px | dead at 64 px | border layer at 32 px |", "|---" * 6 + "|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['variant']} | {row['rf']} | {100 * row['dead_32']:.1f}% | "
                     f"{100 * row['dead_64']:.1f}% | {row['border_32'] or '-'} |")
    stock = [row for row in rows if row["variant"] == "timm default"]
    if stock:
        lines += ["", "At 224 px: " + ", ".join(f"{r['model']} {100 * r['dead_224']:.1f}%" for r in stock) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    rows = []
    for family in FAMILIES:
        for label, kwargs, channels in VARIANTS:
            for k in (1, 2, 3, 4):
                rows.append(dict(measure(f"{family}{k}", kwargs, channels, (32, 64)), variant=label))
    for name in STOCK:
        rows.append(dict(measure(name, {}, 3, (32, 64, 224)), variant="timm default"))
    path = write_result("live_weights", dict(rows=rows), markdown(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
