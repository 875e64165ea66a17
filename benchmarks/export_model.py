"""Exported model: ONNX fp32 vs int8 size and test metrics, eager vs ONNX Runtime CPU latency.

One process, one checkpoint: ``mtl.export.export_model`` writes the fp32 ONNX model and the int8
one (with the per-task metric change on the split given), then the eager model, ONNX Runtime
fp32 and ONNX Runtime int8 predict the same batches side by side (``_timing.py``: every round
runs the variants in a freshly shuffled order; medians over rounds; a second copy of the eager
model is timed as a control, its ratio must be near 1.00). Every variant gets the same number
of CPU threads (``--threads``: torch's intra-op threads and ONNX Runtime's
``intra_op_num_threads``). Input preparation (uint8 -> normalised float) is outside the timed
call for every variant.

Usage::

    python benchmarks/export_model.py --model models/model.pt --split data/augmented/test \\
        [--batch-sizes 1 256] [--rounds 30] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times, median_ratios

from mtl.checkpoint import load_checkpoint
from mtl.export import EvalData, export_model
from mtl.inference import to_model_input
from mtl.splits import feature_columns, load_split_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--split", default="data/augmented/test")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the markdown here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(Path(args.model))
    split = Path(args.split)
    data = load_split_data(split.parent, split.name, ckpt.tasks, feature_columns(ckpt.schema))
    lines = [f"`python benchmarks/export_model.py --model {args.model} --split {args.split} "
             f"--batch-sizes {' '.join(map(str, args.batch_sizes))} --rounds {args.rounds} "
             f"--threads {args.threads}`", "",
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"onnxruntime {ort.__version__}, {args.threads} thread(s); model "
             f"{ckpt.meta['architecture']} + {ckpt.meta['backbone']}, {len(data)} "
             f"{args.split} images", ""]
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_model(ckpt, "onnx", fp32)
        report = export_model(ckpt, "onnx", int8, quantize="int8",
                              eval_data=EvalData(data.images, data.targets, data.features))
        q = report.quantize
        assert q is not None
        lines += ["| model | size (bytes) | " + " | ".join(
            f"{t} {m['metric']}" for t, m in q.metrics.items()) + " |",
            "|---|---|" + "---|" * len(q.metrics)]
        lines.append(f"| ONNX fp32 | {q.fp32_bytes} | " + " | ".join(
            f"{m['fp32']:.4f}" for m in q.metrics.values()) + " |")
        lines.append(f"| ONNX int8 | {q.int8_bytes} ({q.int8_bytes / q.fp32_bytes:.1%}) | "
                     + " | ".join(f"{m['int8']:.4f} ({m['change']:+.4f})"
                                  for m in q.metrics.values()) + " |")
        lines += ["", "int8 predictions equal to fp32's: " + ", ".join(
            f"{t} {a:.1%}" for t, a in q.agreement.items()), ""]

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sessions = {name: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                    for name, p in (("fp32", fp32), ("int8", int8))}
        model = ckpt.model.cpu().eval()
        lines += ["| batch | eager torch ms | ONNX Runtime fp32 ms | ONNX Runtime int8 ms | "
                  "fp32 / eager | int8 / eager | control |", "|---|---|---|---|---|---|---|"]
        for bs in args.batch_sizes:
            x = to_model_input(data.images[:bs], torch.device("cpu")).contiguous()
            f = None if data.features is None else data.features[:bs].float()
            feed = {"image": x.numpy()} | ({} if f is None else {"features": f.numpy()})

            def eager(x: torch.Tensor = x, f: torch.Tensor | None = f) -> object:
                with torch.no_grad():
                    return model(x, f)

            def onnx_fp32(feed: dict[str, np.ndarray] = feed) -> object:
                return sessions["fp32"].run(None, feed)

            def onnx_int8(feed: dict[str, np.ndarray] = feed) -> object:
                return sessions["int8"].run(None, feed)

            times = interleaved_times([eager, onnx_fp32, onnx_int8, eager], args.rounds)
            ms = [statistics.median(t) * 1e3 for t in times]
            r = median_ratios(times)
            lines.append(f"| {len(x)} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | {r[1]:.2f} | "
                         f"{r[2]:.2f} | {r[3]:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
