"""Export benchmark: file sizes and LiteRT latency of every export layout (issue 5 item 7).

For ResNet-26 (64x64, parallel full-rank adapters, `--width-factor`) and the main example's
small network (ResNet-26 at width 0.25 on 16x16x1 digits), with 5 and 10 domains, in one run:

- sizes: base network (same architecture without adapters, folded), folded domain model,
  multi-signature file with T signatures, swappable base, fold-on-switch template and fold
  model, one pack (float32 full-rank adapters, and float16 packs of a rank-r ResidualAdapter
  model: the SVD-compressed form);
- LiteRT latency at batch 1 with 1 and 2 threads of base, folded, swappable (variables) and
  fold-on-switch, interleaved per repetition, medians, at two levels side by side: the
  interpreter (per call: set the image, invoke; the swappable model's domain written once
  through its `set_domain` signature, the fold-on-switch template patched once for it) and
  the package's runners (`FoldedModel.predict` for base and folded, `SwappableModel.predict`
  and `FoldOnSwitchModel.predict`, a domain already loaded);
- the cost of a domain switch (`load_pack` alternating two domains, median): writing the
  variables (swappable) against refolding and a new interpreter (fold-on-switch);
- quantisation (small network, 5 domains): size, max abs logit error relative to the logit
  spread, and top-1 agreement with the Keras model for every layout and option.

The issues' targets are reported pass/fail. Weights are random (sizes and latency do not
depend on them; the parity numbers are on random images). The load average is recorded at
the start and the end: on a shared machine only the ratios mean much.

    KERAS_BACKEND=tensorflow timeout 3000 python benchmarks/export_benchmark.py
    KERAS_BACKEND=tensorflow python benchmarks/export_benchmark.py --quick  # a few minutes

write `benchmarks/results/export.{md,json,png}` (`export_quick.*`).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from keras_mdn.export import (  # noqa: E402
    FoldedModel,
    FoldOnSwitchModel,
    Pack,
    SwappableModel,
    SwappablePlan,
    export_fold_on_switch_tflite,
    export_folded_tflite,
    export_multi_signature_tflite,
    export_swappable_tflite,
    op_counts,
    packs,
)
from keras_mdn.export.tflite import SET_DOMAIN_SIGNATURE  # noqa: E402
from keras_mdn.models import resnet26  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-factor", type=float, default=1.0)
    parser.add_argument("--domains", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--rank", type=int, default=16, help="rank of the compressed adapters")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quantization-domains", type=int, default=3,
                        help="domains of the small network in the quantisation table")
    parser.add_argument("--quick", action="store_true",
                        help="small networks, 5 domains, no quantisation table")
    parser.add_argument("--no-quantization", action="store_true",
                        help="skip the quantisation table")
    parser.add_argument("--quantization-from", default=None,
                        help="reuse the quantisation table of an earlier results JSON")
    parser.add_argument("--output", default="export")
    return parser.parse_args()


def randomize(model, seed=0):
    """Random per-domain parameters at realistic scales (sizes/latency do not depend on them)."""
    r = np.random.default_rng(seed)
    for weight in model.weights:
        path = weight.path
        if "adapter_kernel" in path:
            value = r.normal(size=weight.shape) * 0.02
        elif "moving_variance" in path or "gamma" in path:
            value = r.uniform(0.8, 1.2, size=weight.shape)
        elif "moving_mean" in path or "beta" in path:
            value = r.normal(size=weight.shape) * 0.05
        else:
            continue
        weight.assign(value.astype("float32"))
    return model


def size(path):
    return os.path.getsize(path)


class Timer:
    """Batch-1 invoke latency of one signature, at the interpreter level.

    Per call: set the image, invoke (the signature's subgraph). The swappable model's domain is
    written once before, through its `set_domain` signature, as an app does on a switch.
    """

    def __init__(self, path, threads, signature, set_domain=None, content=None):
        from ai_edge_litert.interpreter import Interpreter

        if content is not None:  # a fold-on-switch template patched for a domain
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
        else:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        if set_domain is not None:
            self.interpreter.get_signature_runner(SET_DOMAIN_SIGNATURE)(**set_domain)
        runner = self.interpreter.get_signature_runner(signature)
        (image_name,) = runner.get_input_details()
        shape = runner.get_input_details()[image_name]["shape"]
        image = np.random.default_rng(0).normal(size=shape).astype("float32")
        runner(**{image_name: image})  # allocates
        # The signature runner resizes and allocates on every call; the bare set/invoke is
        # the interpreter's own cost (private wrapper: benchmark only).
        wrapper, subgraph = runner._interpreter_wrapper, runner._subgraph_index
        index = runner._inputs[image_name]

        def invoke():
            wrapper.SetTensor(index, image, subgraph)
            wrapper.Invoke(subgraph)

        self.invoke = invoke
        for _ in range(3):
            self.invoke()

    def measure(self, seconds=0.3):
        return _measure(self.invoke, seconds)


class RunnerTimer:
    """Batch-1 latency of a keras_mdn runner's `predict(image, domain)` (domain loaded)."""

    def __init__(self, runner, shape, domain=0):
        image = np.random.default_rng(0).normal(size=(1,) + tuple(shape)).astype("float32")
        self.invoke = lambda: runner.predict(image, domain)
        for _ in range(3):
            self.invoke()

    def measure(self, seconds=0.3):
        return _measure(self.invoke, seconds)


def switch_seconds(runner, packs_by_domain, repeats=5, parts=None):
    """Median wall time of `load_pack`, alternating two domains (the runner's switch).

    With a dict `parts`, also the median of each part of a fold-on-switch switch (seconds).
    """
    times, breakdown = [], []
    for index in range(repeats + 1):
        domain = index % 2
        start = time.perf_counter()
        runner.load_pack(packs_by_domain[domain], domain=domain)
        if index:  # the first call also warms up
            times.append(time.perf_counter() - start)
            breakdown.append(getattr(runner, "switch_breakdown", {}))
    if parts is not None:
        for key in breakdown[0]:
            parts[key] = statistics.median(b[key] for b in breakdown)
    return statistics.median(times)


def _measure(invoke, seconds):
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or count < 3:
        invoke()
        count += 1
    return (time.perf_counter() - start) / count


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def build_resnet(width_factor, input_shape):
    def build(adapter, num_domains, rank=None):
        model = resnet26([10] * num_domains, adapter=adapter, input_shape=input_shape,
                         width_factor=width_factor, rank=rank)
        return randomize(model)

    return build


def keras_logits(model, images, domain):
    domains = np.full((len(images),), domain, "int32")
    return np.asarray(model({"image": images, "domain": domains}))[:, :10]


def parity(model, runner, images_by_domain, domains):
    errors, agreement = [], []
    for domain in domains:
        images = images_by_domain[domain]
        expected = keras_logits(model, images, domain)
        out = runner(images, domain)
        errors.append(float(np.max(np.abs(out - expected)) / np.ptp(expected)))
        agreement.append(float(np.mean(out.argmax(-1) == expected.argmax(-1))))
    return max(errors), float(np.mean(agreement))


def network(name, build, domain_counts, args, tmp):
    """Sizes and latency of every layout for one network, for each number of domains."""
    log(f"== {name}")
    base_model = build(None, 2)
    base = export_folded_tflite(base_model, f"{tmp}/{name}_base", [0])[0]
    rows = []
    for num_domains in domain_counts:
        t0 = time.time()
        model = build("parallel", num_domains)
        folded = export_folded_tflite(model, f"{tmp}/{name}_{num_domains}_folded", [0])[0]
        multi = export_multi_signature_tflite(model, f"{tmp}/{name}_{num_domains}_multi.tflite")
        swap = export_swappable_tflite(model, f"{tmp}/{name}_{num_domains}_swap", [0, 1])
        fos = export_fold_on_switch_tflite(model, f"{tmp}/{name}_{num_domains}_fos", [0, 1],
                                           write_packs=False)
        pack = packs.read_pack(swap["packs"][0])
        compressed = SwappablePlan(build("parallel", num_domains, rank=args.rank))
        compressed_pack = {
            dtype: len(packs.encode(Pack(compressed.model_id, 0, "domain_0",
                                         compressed.pack_tensors(0), dtype=dtype)))
            for dtype in ("float32", "float16")
        }
        row = {
            "network": name,
            "domains": num_domains,
            "base_bytes": size(base),
            "folded_bytes": size(folded),
            "multi_signature_bytes": size(multi),
            "swappable_bytes": size(swap["base"]),
            "template_bytes": size(fos["template"]),
            "fold_bytes": size(fos["fold"]),
            "template_ops_equal_base": op_counts(open(fos["template"], "rb").read())
            == op_counts(open(base, "rb").read()),
            "pack_float32_bytes": size(swap["packs"][0]),
            "pack_float16_bytes": len(packs.encode(Pack(pack.model_id, 0, "domain_0",
                                                        pack.tensors, dtype="float16"))),
            "compressed_rank": args.rank,
            "compressed_pack_float32_bytes": compressed_pack["float32"],
            "compressed_pack_float16_bytes": compressed_pack["float16"],
            "folded_ops_equal_base": op_counts(open(folded, "rb").read())
            == op_counts(open(base, "rb").read()),
            "export_seconds": time.time() - t0,
        }
        shape = tuple(model.inputs[0].shape[1:])
        timers = {}
        for threads in (1, 2):
            timers[("base", threads)] = Timer(base, threads, "domain_0")
            timers[("folded", threads)] = Timer(folded, threads, "domain_0")
            timers[("swappable", threads)] = Timer(swap["base"], threads, "swappable",
                                                   pack.tensors)
            timers[("runner_base", threads)] = RunnerTimer(
                FoldedModel({0: base}, num_threads=threads), shape)
            timers[("runner_folded", threads)] = RunnerTimer(
                FoldedModel({0: folded}, num_threads=threads), shape)
            timers[("runner_swappable", threads)] = RunnerTimer(
                SwappableModel(swap["base"], swap["packs"], num_threads=threads), shape)
            switching = FoldOnSwitchModel(fos["template"], fos["fold"], swap["packs"],
                                          num_threads=threads)
            parts = {}
            row[f"fold_on_switch_switch_ms_{threads}t"] = 1e3 * switch_seconds(
                switching, swap["packs"], parts=parts)
            for key, value in parts.items():
                row[f"fold_on_switch_switch_{key}_ms_{threads}t"] = 1e3 * value
            row[f"swappable_switch_ms_{threads}t"] = 1e3 * switch_seconds(
                SwappableModel(swap["base"], swap["packs"], num_threads=threads), swap["packs"])
            switching.load_pack(swap["packs"][0], domain=0)
            timers[("fold_on_switch", threads)] = Timer(
                None, threads, "template", content=switching._model)
            timers[("runner_fold_on_switch", threads)] = RunnerTimer(switching, shape)
        samples = {key: [] for key in timers}
        for _ in range(args.repeats):
            for key, timer in timers.items():  # interleaved: drift hits every variant alike
                samples[key].append(timer.measure())
        for (variant, threads), values in samples.items():
            row[f"{variant}_latency_ms_{threads}t"] = 1e3 * statistics.median(values)
        rows.append(row)
        log(json.dumps(row))
    return rows


def quantization_table(name, build, num_domains, args, tmp):
    """Size, parity and top-1 agreement of every layout and quantisation option."""
    log(f"== quantisation, {name}, {num_domains} domains")
    args.quantization_domains = num_domains
    model = build("parallel", num_domains)
    r = np.random.default_rng(1)
    shape = tuple(model.inputs[0].shape[1:])
    images = {d: r.normal(size=(32,) + shape).astype("float32") for d in range(num_domains)}
    calibration = {d: r.normal(size=(16,) + shape).astype("float32") for d in range(num_domains)}
    from keras_mdn.export import FoldedModel, MultiSignatureModel, SwappableModel

    rows = []
    folded_domains = [0, 1]
    float_swap = None
    for quantization in (None, "float16", "dynamic_range", "int8"):
        tag = str(quantization)
        folded = export_folded_tflite(model, f"{tmp}/q_folded", folded_domains, quantization,
                                      calibration)
        multi = export_multi_signature_tflite(model, f"{tmp}/q_multi_{tag}.tflite", None,
                                              quantization, calibration)
        swap = export_swappable_tflite(model, f"{tmp}/q_swap_{tag}", None, quantization,
                                       calibration)
        runners = {
            "folded": (FoldedModel(folded).predict, folded_domains, size(folded[0])),
            "multi_signature": (MultiSignatureModel(multi).predict, range(num_domains),
                                size(multi)),
            "swappable": (SwappableModel(swap["base"], swap["packs"]).predict,
                          range(num_domains), size(swap["base"])),
        }
        if quantization is None:
            float_swap = swap
        for layout, (runner, domains, nbytes) in runners.items():
            error, agreement = parity(model, runner, images, domains)
            rows.append({"layout": layout, "quantization": tag, "bytes": nbytes,
                         "max_error_over_spread": error, "top1_agreement": agreement})
            log(json.dumps(rows[-1]))
    # Reduced-precision packs with the float32 swappable base.
    for dtype in ("float16", "int8"):
        runner = SwappableModel(float_swap["base"])
        pack_bytes = []

        def predict(images_, domain, runner=runner, dtype=dtype, pack_bytes=pack_bytes):
            source = packs.read_pack(float_swap["packs"][domain])
            data = packs.encode(Pack(source.model_id, domain, source.domain_name,
                                     source.tensors, dtype=dtype,
                                     num_classes=source.num_classes))
            pack_bytes.append(len(data))
            runner.load_pack(packs.decode(data))
            return runner.predict(images_)

        error, agreement = parity(model, predict, images, range(num_domains))
        rows.append({"layout": f"swappable, {dtype} pack", "quantization": "None",
                     "bytes": pack_bytes[0], "max_error_over_spread": error,
                     "top1_agreement": agreement})
        log(json.dumps(rows[-1]))
    return rows


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def targets(row):
    base = row["base_bytes"]

    def latency(variant, reference, threads):
        return row[f"{variant}_latency_ms_{threads}t"] / row[f"{reference}_latency_ms_{threads}t"]

    checks = [
        ("folded size <= 1.02 base", row["folded_bytes"] / base, 1.02),
    ]
    for threads in (1, 2):
        checks += [
            (f"folded latency <= 1.02 base ({threads}t)", latency("folded", "base", threads),
             1.02),
            (f"swappable latency <= 1.05 base ({threads}t)",
             latency("swappable", "base", threads), 1.05),
            (f"runner: swappable <= 1.05 folded ({threads}t)",
             latency("runner_swappable", "runner_folded", threads), 1.05),
            (f"fold-on-switch latency <= 1.05 base ({threads}t)",
             latency("fold_on_switch", "base", threads), 1.05),
            (f"runner: fold-on-switch <= 1.05 folded ({threads}t)",
             latency("runner_fold_on_switch", "runner_folded", threads), 1.05),
        ]
    checks += [
        ("pack float32 <= 12 % base", row["pack_float32_bytes"] / base, 0.12),
        (f"pack rank {row['compressed_rank']} float16 <= 3 % base",
         row["compressed_pack_float16_bytes"] / base, 0.03),
        ("multi-signature <= (base + T packs) * 1.02", row["multi_signature_bytes"]
         / (base + row["domains"] * row["pack_float32_bytes"]), 1.02),
    ]
    return [(name, value, value <= limit) for name, value, limit in checks]


def write(rows, quant_rows, args, command, seconds, loads):
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / args.output
    payload = {"command": command, "seconds": seconds, "machine": platform.platform(),
               "cpus": os.cpu_count(), "load_average": loads, "networks": rows,
               "quantization": quant_rows}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Export benchmark",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min, {platform.platform()}, "
        f"{os.cpu_count()} CPUs shared with other jobs; latencies are medians of "
        f"{args.repeats} interleaved repetitions, batch 1, LiteRT with XNNPACK; load average "
        f"{loads['start']} at the start, {loads['end']} at the end).",
        "",
        "## Sizes (bytes) and latency (ms)",
        "",
        "| network | T | base | folded | multi-signature | swappable base | pack f32 | "
        f"pack f16 | rank-{args.rank} pack f16 | base 1t | folded 1t | swappable 1t | "
        "base 2t | folded 2t | swappable 2t |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['domains']} | {r['base_bytes']:,} | {r['folded_bytes']:,} | "
            f"{r['multi_signature_bytes']:,} | {r['swappable_bytes']:,} | "
            f"{r['pack_float32_bytes']:,} | {r['pack_float16_bytes']:,} | "
            f"{r['compressed_pack_float16_bytes']:,} | "
            f"{r['base_latency_ms_1t']:.2f} | {r['folded_latency_ms_1t']:.2f} | "
            f"{r['swappable_latency_ms_1t']:.2f} | {r['base_latency_ms_2t']:.2f} | "
            f"{r['folded_latency_ms_2t']:.2f} | {r['swappable_latency_ms_2t']:.2f} |"
        )
    lines += [
        "", "## Latency through the package's runners (ms, batch 1, `predict`)", "",
        "| network | T | base 1t | folded 1t | swappable 1t | base 2t | folded 2t | "
        "swappable 2t |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['domains']} | "
            + " | ".join(f"{r[f'runner_{v}_latency_ms_{t}t']:.3f}"
                         for t in (1, 2) for v in ("base", "folded", "swappable")) + " |")
    lines += [
        "", "## Fold-on-switch layout (the default of `load`)", "",
        "Interpreter and runner latency (ms, batch 1) next to the cost of a domain switch "
        "(ms, `load_pack` alternating two domains: fold.tflite + patching the bytes + a new "
        "interpreter with one run, each part given; for the swappable layout: writing the "
        "variables).", "",
        "| network | T | template | fold.tflite | base 1t | fold-on-switch 1t | runner 1t | "
        "switch 1t | swappable switch 1t | base 2t | fold-on-switch 2t | runner 2t | "
        "switch 2t | swappable switch 2t |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r['template_bytes']:,}", f"{r['fold_bytes']:,}"]
        for t in (1, 2):
            cells += [f"{r[f'base_latency_ms_{t}t']:.3f}",
                      f"{r[f'fold_on_switch_latency_ms_{t}t']:.3f}",
                      f"{r[f'runner_fold_on_switch_latency_ms_{t}t']:.3f}",
                      f"{r[f'fold_on_switch_switch_ms_{t}t']:.1f} ("
                      + " + ".join(f"{r[f'fold_on_switch_switch_{k}_ms_{t}t']:.1f}"
                                   for k in ("fold", "patch", "interpreter")) + ")",
                      f"{r[f'swappable_switch_ms_{t}t']:.2f}"]
        lines.append(f"| {r['network']} | {r['domains']} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| network | T | target | measured | pass |",
              "|---|---:|---|---:|---|"]
    for r in rows:
        for name, value, ok in targets(r):
            shown = f"{100 * value:.2f} %" if "%" in name else f"{value:.3f}x"
            lines.append(f"| {r['network']} | {r['domains']} | {name} | {shown} | "
                         f"{'pass' if ok else 'FAIL'} |")
        for key, label in (("folded_ops_equal_base", "folded"),
                           ("template_ops_equal_base", "fold-on-switch template")):
            lines.append(f"| {r['network']} | {r['domains']} | {label} TFLite ops == base ops "
                         f"| {r[key]} | {'pass' if r[key] else 'FAIL'} |")
    if not quant_rows:
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        plot(rows, out.with_suffix(".png"))
        return
    lines += ["", f"## Quantisation (small network, {args.quantization_domains} domains)", "",
              "Error: max abs logit error / spread of the Keras logits, worst domain; top-1: "
              "agreement with the Keras model on random images (32 per domain). Folded: "
              "domains 0 and 1."
              + (f" From the run `{args.quantization_source}`."
                 if getattr(args, "quantization_source", None) else ""), "",
              "| layout | quantization | bytes | error / spread | top-1 agreement |",
              "|---|---|---:|---:|---:|"]
    for q in quant_rows:
        lines.append(f"| {q['layout']} | {q['quantization']} | {q['bytes']:,} | "
                     f"{q['max_error_over_spread']:.2e} | {q['top1_agreement']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, out.with_suffix(".png"))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['network']}\nT={r['domains']}" for r in rows]
    x = np.arange(len(rows))
    width = 0.2
    series = {
        "folded / base": [r["folded_bytes"] / r["base_bytes"] for r in rows],
        "multi-sig / (base + T packs)": [
            r["multi_signature_bytes"] / (r["base_bytes"] + r["domains"] * r["pack_float32_bytes"])
            for r in rows],
        "pack f32 / base": [r["pack_float32_bytes"] / r["base_bytes"] for r in rows],
        "rank-r pack f16 / base": [r["compressed_pack_float16_bytes"] / r["base_bytes"]
                                   for r in rows],
    }
    for i, (name, values) in enumerate(series.items()):
        axes[0].bar(x + (i - 1.5) * width, values, width, label=name)
    axes[0].set_xticks(x, labels)
    axes[0].set_title("size ratios")
    axes[0].legend(fontsize=8)
    variants = [("folded", 1), ("folded", 2), ("swappable", 1), ("swappable", 2),
                ("fold_on_switch", 1), ("fold_on_switch", 2)]
    bar = width * 4 / len(variants)
    for i, (variant, threads) in enumerate(variants):
        values = [r[f"{variant}_latency_ms_{threads}t"] / r[f"base_latency_ms_{threads}t"]
                  for r in rows]
        axes[1].bar(x + (i - (len(variants) - 1) / 2) * bar, values, bar,
                    label=f"{variant}, {threads} thread(s)")
    axes[1].axhline(1.05, color="red", linestyle="--", linewidth=1, label="swappable target")
    axes[1].axhline(1.02, color="gray", linestyle=":", linewidth=1, label="folded target")
    axes[1].set_xticks(x, labels)
    axes[1].set_title("latency / base network (batch 1)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    args = parse_args()
    command = "KERAS_BACKEND=tensorflow python benchmarks/export_benchmark.py " + " ".join(
        sys.argv[1:])
    start = time.time()
    loads = {"start": load_average()}
    small = build_resnet(0.25, (16, 16, 1))
    if args.quick:
        args.domains = [5]
        args.no_quantization = True
        if args.output == "export":
            args.output = "export_quick"
        networks = [("resnet26-w0.5-32px", build_resnet(0.5, (32, 32, 3)))]
    else:
        networks = [(f"resnet26-w{args.width_factor:g}-64px",
                     build_resnet(args.width_factor, (64, 64, 3)))]
    networks.append(("small (example, resnet26-w0.25-16px)", small))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        quant_rows = []
        if args.quantization_from:
            previous = json.loads((RESULTS / args.quantization_from).read_text())
            quant_rows = previous["quantization"]
            args.quantization_source = previous["command"]
        elif not args.no_quantization:
            quant_rows = quantization_table("small", small, args.quantization_domains, args,
                                            tmp)
        for name, build in networks:
            key = name.split(" ")[0]
            rows += network(key, build, args.domains, args, tmp)
    loads["end"] = load_average()
    write(rows, quant_rows, args, command, time.time() - start, loads)
    log(f"done in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
