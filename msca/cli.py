"""The `msca` console script.

    msca train --config configs/demo.json [--steps N] [--out DIR] [--resume] [--set key=value]
    msca synthesize --label L.png --exemplar X.jpg --exemplar-label XL.png --out out.png
    msca swap --n 4 --out grid.png
    msca demo --out out/demo

Errors are reported as one line naming the file or argument at fault (exit status 2); set
MSCA_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CHECKPOINT = os.path.join("checkpoints", "demo.pt")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _repo_path(rel: str) -> str:
    """`rel` relative to the working directory if it exists there, else to this checkout."""
    if os.path.exists(rel):
        return rel
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, rel)


def _threads(n: int | None) -> None:
    if n:
        import torch
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from msca.train import Trainer, init_distributed, load_config

    train_overrides = {}
    if args.steps is not None:
        train_overrides["steps"] = args.steps
    if args.checkpoint_every is not None:
        train_overrides["checkpoint_every"] = args.checkpoint_every
    if args.bf16:
        train_overrides["bf16"] = True
    opt, settings = load_config(args.config, args.set, train_overrides)
    out = args.out or os.path.join("runs", opt.name)
    rank, world = init_distributed()
    trainer = Trainer(opt, settings, out, resume=args.resume)
    if rank == 0:
        print(f"msca train: {args.config} -> {out} | steps {trainer.step}..{settings.steps} "
              f"(pretrain < {trainer.pretrain_end} <= patch < {trainer.patch_end} <= "
              f"patch+global) | alignment {opt.alignment} | backend {opt.backend} | "
              f"{world} process(es)", flush=True)
    trainer.train()
    if args.export:
        trainer.export(args.export)
        if rank == 0:
            print(f"msca train: exported the generator to {args.export}")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------- apps
def cmd_synthesize(args) -> int:
    from msca.apps.synthesize import synthesize_files
    synthesize_files(label=args.label, exemplar=args.exemplar,
                     exemplar_label=args.exemplar_label, out=args.out,
                     checkpoint=args.checkpoint or _repo_path(DEFAULT_CHECKPOINT),
                     backend=args.backend, size=args.size, attention_out=args.attention)
    print(f"msca synthesize: wrote {args.out}")
    return 0


def cmd_swap(args) -> int:
    from msca.apps.swap import swap_grid_files
    swap_grid_files(out=args.out, n=args.n, checkpoint=args.checkpoint or
                    _repo_path(DEFAULT_CHECKPOINT), images=args.images, labels=args.labels,
                    backend=args.backend, seed=args.seed, size=args.size)
    print(f"msca swap: wrote {args.out}")
    return 0


def cmd_demo(args) -> int:
    from msca.demo import run_demo
    run_demo(out=args.out, checkpoint=args.checkpoint or _repo_path(DEFAULT_CHECKPOINT),
             gap_checkpoint=args.gap_checkpoint or _repo_path(
                 os.path.join("checkpoints", "demo_gap.pt")),
             pairs=args.pairs, backend=args.backend)
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msca", description="Example-guided image synthesis across arbitrary scenes "
        "(MSCA): training, synthesis on your own files, style-structure swap grids, demo.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="self-supervised training (paper Sec. 3.4)",
                       description="Train the generator: MSCA pretraining with the feature "
                       "decoder, then patch cross-reconstruction, then patch + global "
                       "self-reconstruction. Multi-process: torchrun --nproc_per_node N "
                       "-m msca.cli train ...")
    t.add_argument("--config", required=True,
                   help="an options or training config file, or a name: 'demo' finds "
                   "configs/demo_train.json (else configs/demo.json)")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--out", help="run directory for checkpoint.pt and log.jsonl "
                   "(default runs/<name>)")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/checkpoint.pt")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option, e.g. --set alignment=gap (repeatable)")
    t.add_argument("--checkpoint-every", type=int, help="checkpoint interval in steps")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument("--export", help="also write the small inference checkpoint here "
                   "(options + generator), e.g. checkpoints/demo.pt")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("synthesize", help="synthesize from your own label map and exemplar",
                       description="Render the label map LABEL in the style of EXEMPLAR. The "
                       "exemplar needs its own label map (--exemplar-label): the paper gets it "
                       "from a COCO-stuff DeepLab-v2 segmentation network, which is not part "
                       "of this package. Label PNGs hold class ids (0..num_classes-1; 255 = "
                       "unlabelled), single channel.")
    s.add_argument("--label", required=True, help="target label map PNG (class ids)")
    s.add_argument("--exemplar", required=True, help="exemplar image (PNG/JPEG)")
    s.add_argument("--exemplar-label", help="the exemplar's label map PNG (required)")
    s.add_argument("--out", required=True, help="output PNG")
    s.add_argument("--checkpoint", help=f"model checkpoint (default {DEFAULT_CHECKPOINT})")
    s.add_argument("--size", type=int, default=None,
                   help="working resolution (default: the checkpoint's crop_size)")
    s.add_argument("--attention", help="also write the attention maps of scale 0 here")
    s.add_argument("--backend", default=None, help="kernel backend: auto, cpu, reference, ...")
    s.set_defaults(func=cmd_synthesize)

    w = sub.add_parser("swap", help="style-structure swap grid (paper Fig. 9)",
                       description="Grid of N scenes: row r = the style of scene r (its "
                       "exemplar), column c = the layout of scene c. The first row and column "
                       "show the scenes themselves. Procedural test scenes by default, or "
                       "your own with --images and --labels.")
    w.add_argument("--n", type=int, default=4, help="number of scenes (default 4)")
    w.add_argument("--out", required=True, help="output PNG")
    w.add_argument("--images", nargs="+", help="your own scene images (N of them)")
    w.add_argument("--labels", nargs="+", help="their label map PNGs, same order")
    w.add_argument("--checkpoint", help=f"model checkpoint (default {DEFAULT_CHECKPOINT})")
    w.add_argument("--seed", type=int, default=0, help="procedural scene seed")
    w.add_argument("--size", type=int, default=None, help="working resolution")
    w.add_argument("--backend", default=None, help="kernel backend")
    w.set_defaults(func=cmd_swap)

    d = sub.add_parser("demo", help="the README demo: synthesis on unseen procedural pairs, "
                       "PSNR vs exact ground truth and two baselines")
    d.add_argument("--out", default=os.path.join("out", "demo"), help="output directory")
    d.add_argument("--checkpoint", help=f"model (default {DEFAULT_CHECKPOINT})")
    d.add_argument("--gap-checkpoint", help="GAP ablation (default checkpoints/demo_gap.pt)")
    d.add_argument("--pairs", type=int, default=100, help="unseen test pairs (default 100)")
    d.add_argument("--backend", default=None, help="kernel backend")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, ValueError) as e:
        if os.environ.get("MSCA_DEBUG"):
            raise
        print(f"msca {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
