#!/usr/bin/env python3
"""Parameter counts of every model configuration next to the paper's Table 4 (docs/baselines.md).

    python scripts/count_parameters.py                       # MiT-B2, 13 classes, decoder 256 (paper configs)
    python scripts/count_parameters.py --backbone mit_b0 --decoder-dim 128 --json counts.json

Builds each configuration of ``LinearFusionSegFormer`` with random weights (no download) and
counts its parameters, split into encoder(s), fusion-specific parts and decoder, so the
difference to the paper's numbers can be traced to a part.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m3l_core.model import LinearFusionSegFormer, ModelConfig, count_parameters

# Paper Table 4 (MiT-B2, Stanford-Indoor, 13 classes), millions of parameters.
PAPER_MILLIONS = {"Uni-modal": 24.73, "TokenFusion": 26.02, "URN": 48.93, "Linear Fusion": 24.75}

VARIANTS = {  # row -> ModelConfig fields beyond backbone / classes / decoder
    "Uni-modal": dict(modalities=("rgb",), missing_token=False),
    "TokenFusion": dict(fusion="tokenfusion"),
    "URN": dict(fusion="urn"),
    "Linear Fusion": dict(fusion="linear"),
}


def breakdown(model: LinearFusionSegFormer) -> dict[str, int]:
    """Parameters per part: encoder(s), TF scorers, token + ensemble weights, decoder, total."""
    parts = {
        "encoders": count_parameters(model.encoder) + (count_parameters(model.depth_encoder)
                                                       if model.depth_encoder is not None else 0),
        "tf_scorers": count_parameters(model.token_fusion) if model.token_fusion is not None else 0,
        "token_ensemble": sum(p.numel() for p in (model.missing_token, model.ensemble_logits) if p is not None),
        "decoder": count_parameters(model.decoder),
    }
    parts["total"] = count_parameters(model)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total"), "a part is not counted"
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mit_b2")
    ap.add_argument("--num-classes", type=int, default=13)
    ap.add_argument("--decoder-dim", type=int, default=256)
    ap.add_argument("--json", type=Path, help="also write the counts as JSON")
    args = ap.parse_args(argv)

    rows = {}
    for name, kw in VARIANTS.items():
        cfg = ModelConfig(backbone=args.backbone, num_classes=args.num_classes, decoder_dim=args.decoder_dim, **kw)
        rows[name] = breakdown(LinearFusionSegFormer(cfg))
    paper = args.backbone == "mit_b2" and args.num_classes == 13 and args.decoder_dim == 256
    print(f"{args.backbone}, {args.num_classes} classes, decoder dim {args.decoder_dim} (millions of parameters)\n")
    print("| Model | encoder(s) | TF scorers | token + ensemble | decoder | total | paper (Table 4) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, p in rows.items():
        ref = f"{PAPER_MILLIONS[name]:.2f}" if paper else "-"
        print(f"| {name} | {p['encoders'] / 1e6:.3f} | {p['tf_scorers'] / 1e6:.3f} | {p['token_ensemble']:d} | "
              f"{p['decoder'] / 1e6:.3f} | **{p['total'] / 1e6:.2f}** | {ref} |")
    if args.json:
        args.json.write_text(json.dumps({"backbone": args.backbone, "num_classes": args.num_classes,
                                         "decoder_dim": args.decoder_dim, "counts": rows,
                                         "paper_millions": PAPER_MILLIONS if paper else None}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
