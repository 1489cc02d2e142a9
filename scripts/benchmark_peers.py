"""This project on the peers' benchmark work (../shared/peers/README.md), and the report beside Joey NMT and
OpenNMT-py. `scripts/benchmark_peers.sh` runs the whole sequence; this file holds its two Python steps.

    python scripts/benchmark_peers.py decode MODEL_DIR --source test.raw.de --reference test.raw.en --num-beams 5
        Decode like the peers (batch 64, at most 100 new tokens, no length penalty) and time only generation:
        `translate` (the translate command's path: sorted by length, then generate()), the pipeline on the same
        list, generate() on batches
        in corpus order, and for greedy a minimal hand-written loop over the same model (generate()'s overhead,
        also timed alternating with generate(), best of `--overhead-repeats` passes each).
    python scripts/benchmark_peers.py report --peers /tmp/peers --runs runs/benchmark_peers
        Collect the peers' results.json and ours, print the Markdown tables with the ratios, write report.json.
"""

import argparse
import json
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import sacrebleu
import torch
from decoding_args import add_decoding_arguments
from transformers import AutoTokenizer, pipeline

from hf_rnn_attention import RNNAttentionForConditionalGeneration
from hf_rnn_attention.inference import translate


@torch.inference_mode()
def handwritten_greedy(model, input_ids, attention_mask, max_new_tokens):
    """The floor for generate(): encoder once, then per token one decoder step and one output row for each
    sentence still running (finished ones are dropped, as Joey NMT and OpenNMT-py do), argmax."""
    core = model.model
    cache = core.start_decoding(core.encoder(input_ids, attention_mask), attention_mask)
    memory, state, feed = cache.memory, cache.state, cache.input_feed
    batch_size, eos = input_ids.shape[0], model.config.eos_token_id
    outputs = torch.full((batch_size, max_new_tokens), model.config.pad_token_id, dtype=torch.long)
    rows = torch.arange(batch_size)  # the sentences still running
    tokens = torch.full((batch_size, 1), model.config.decoder_start_token_id, dtype=torch.long)
    for t in range(max_new_tokens):
        decoded = core.decoder(tokens, memory, state, feed)
        tokens = model.compute_logits(decoded.attentional[:, -1]).argmax(-1, keepdim=True)  # (R, 1)
        outputs[rows, t] = tokens.squeeze(1)
        going = tokens.squeeze(1) != eos
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            rows, tokens = rows[keep], tokens[keep]
            memory = type(memory)(*(tensor.index_select(0, keep) for tensor in memory))
            state = tuple(s.index_select(1, keep) for s in decoded.state)
            feed = decoded.input_feed.index_select(0, keep) if decoded.input_feed is not None else None
        else:
            state, feed = decoded.state, decoded.input_feed
    return outputs


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def decode(args) -> None:
    if args.no_onednn:  # the model's CPU paths then use PyTorch's own layers (MKL): for the memory comparison
        torch.backends.mkldnn.enabled = False
    model = RNNAttentionForConditionalGeneration.from_pretrained(args.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    sources = Path(args.source).read_text(encoding="utf-8").splitlines()
    references = Path(args.reference).read_text(encoding="utf-8").splitlines()
    # length_penalty 0: hypotheses ranked by their summed log-probability, as the peers do ("no length penalty")
    settings = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, length_penalty=0.0)
    translate(model, tokenizer, sources[:64], batch_size=args.batch_size, **settings)  # warm-up, not timed
    result = {"model_dir": str(args.model_dir), "num_beams": args.num_beams, "sentences": len(sources),
              "onednn": torch.backends.mkldnn.enabled}  # fmt: skip

    hypotheses, seconds = timed(lambda: translate(model, tokenizer, sources, batch_size=args.batch_size, **settings))
    result["sorted"] = {"seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 1),
                        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)}  # fmt: skip
    Path(args.model_dir, f"test_b{args.num_beams}.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    if args.translate_only:
        print(json.dumps(result))
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2))
        return

    # the pipeline on the same list (what a transformers user calls): its list path is the translate command's
    pipe = pipeline("rnn-attention-text2text", model=model, tokenizer=tokenizer)
    outputs, seconds = timed(lambda: pipe(sources, batch_size=args.batch_size, **settings))
    result["pipeline"] = {"seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 1),
                          "same_as_translate": [o["generated_text"] for o in outputs] == hypotheses}  # fmt: skip

    batches = [tokenizer(sources[i : i + args.batch_size], padding=True, return_tensors="pt")
               for i in range(0, len(sources), args.batch_size)]  # fmt: skip
    max_length = args.max_new_tokens + 1  # as a length (decoder start token included), like translate()

    def corpus_order():
        with torch.inference_mode():
            return [
                model.generate(**batch, num_beams=args.num_beams, max_length=max_length, length_penalty=0.0)
                for batch in batches
            ]

    _, seconds = timed(corpus_order)
    result["corpus_order"] = {"seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 1)}
    if args.num_beams == 1:
        loop = lambda: [handwritten_greedy(model, b["input_ids"], b["attention_mask"], args.max_new_tokens)  # noqa: E731
                        for b in batches]  # fmt: skip
        _, seconds = timed(loop)
        result["handwritten_corpus_order"] = {"seconds": round(seconds, 2), "sent_s": round(len(sources) / seconds, 1)}
        result["generate_overhead"] = round(result["corpus_order"]["seconds"] / seconds, 3)
        # the machine's speed drifts by more than generate()'s overhead from one pass to the next: also time both
        # alternating, and compare the best of each
        passes = {"generate": [result["corpus_order"]["seconds"]], "handwritten": [round(seconds, 2)]}
        for _ in range(args.overhead_repeats - 1):
            passes["generate"].append(round(timed(corpus_order)[1], 2))
            passes["handwritten"].append(round(timed(loop)[1], 2))
        result["overhead_passes"] = passes
        result["generate_overhead_best"] = round(min(passes["generate"]) / min(passes["handwritten"]), 3)
    print(json.dumps(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))


def peak_rss_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return round(int(match.group(1)) / 1024) if match else None


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")  # fmt: skip
    wanted = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}; {', '.join(wanted) or 'no AVX2'}"


def report(args) -> None:
    peers = json.loads((Path(args.peers) / "results.json").read_text())
    runs, logs = Path(args.runs), Path(args.runs) / "logs"
    epoch_tokens = peers["epoch_target_tokens"]
    ours = {}
    for results_file in sorted(runs.glob("*/results.json")):
        name = results_file.parent.name
        results = json.loads(results_file.read_text())
        entry = {"train_seconds": round(results["train_runtime_s"], 1),
                 "train_tok_s": round(epoch_tokens / results["train_runtime_s"]),
                 "train_peak_rss_mb": peak_rss_mb(logs / f"train_{name}.time"), "params": results["parameters"]}  # fmt: skip
        for beams in (1, 5):
            decoded = runs / name / f"decode_b{beams}.json"
            if decoded.exists():
                d = json.loads(decoded.read_text())
                entry[f"b{beams}_sent_s"] = d["sorted"]["sent_s"]
                entry[f"b{beams}_bleu"] = d["sorted"]["bleu"]
                entry[f"b{beams}_generate_corpus_order_sent_s"] = d["corpus_order"]["sent_s"]
                if "pipeline" in d:
                    entry[f"b{beams}_pipeline_sent_s"] = d["pipeline"]["sent_s"]
                    entry[f"b{beams}_pipeline_same"] = d["pipeline"]["same_as_translate"]
                # peak memory: the translate command alone (as the peers'); the timing script's process as well
                entry[f"b{beams}_peak_rss_mb"] = peak_rss_mb(logs / f"translate_{name}_b{beams}.time")
                entry[f"b{beams}_timing_script_peak_rss_mb"] = peak_rss_mb(logs / f"decode_{name}_b{beams}.time")
                if "generate_overhead" in d:
                    entry["handwritten_greedy_sent_s"] = d["handwritten_corpus_order"]["sent_s"]
                    entry["generate_overhead"] = d["generate_overhead"]
                    entry["generate_overhead_best"] = d.get("generate_overhead_best")
        ours[name] = entry
    joey, onmt = peers["systems"].get("joey_bahdanau", {}), peers["systems"].get("onmt_mlp", {})
    if "train_tok_s" not in onmt and "train_tok_s_approx" in onmt:  # OpenNMT-py: from its last step line
        onmt = {**onmt, "train_tok_s": onmt["train_tok_s_approx"]}

    def ratio(value, reference, invert=False):
        if value is None or not reference:
            return "–"
        return f"{(reference / value if invert else value / reference):.2f}×"

    lines = [f"date: {datetime.now(timezone.utc):%Y-%m-%d}; machine: {cpu_flags()}; 2 threads",
             f"ceiling: {json.dumps(peers.get('ceiling', {}))}", "",
             "| system | train tok/s | ×Joey | ×ONMT | greedy sent/s | ×Joey | ×ONMT | beam-5 sent/s | ×Joey | ×ONMT "
             "| BLEU greedy / beam 5 | train RSS MB | decode RSS MB (b1/b5), translate command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = [("Joey NMT 2.3 (bahdanau)", joey), ("OpenNMT-py 3.5.1 (mlp)", onmt)] + list(ours.items())
    for name, e in rows:
        lines.append(
            f"| {name} | {e.get('train_tok_s', '–')} | {ratio(e.get('train_tok_s'), joey.get('train_tok_s'))} "
            f"| {ratio(e.get('train_tok_s'), onmt.get('train_tok_s'))} | {e.get('b1_sent_s', '–')} "
            f"| {ratio(e.get('b1_sent_s'), joey.get('b1_sent_s'))} | {ratio(e.get('b1_sent_s'), onmt.get('b1_sent_s'))} "
            f"| {e.get('b5_sent_s', '–')} | {ratio(e.get('b5_sent_s'), joey.get('b5_sent_s'))} "
            f"| {ratio(e.get('b5_sent_s'), onmt.get('b5_sent_s'))} | {e.get('b1_bleu', '–')} / {e.get('b5_bleu', '–')} "
            f"| {e.get('train_peak_rss_mb', '–')} | {e.get('b1_peak_rss_mb', '–')} / {e.get('b5_peak_rss_mb', '–')} |"
        )
    lines += ["", "Peak RSS of the decode timing script (translate, corpus order, hand-written loop; MB, b1 / b5): "
              + "; ".join(f"{name} {e.get('b1_timing_script_peak_rss_mb', '–')} / "
                          f"{e.get('b5_timing_script_peak_rss_mb', '–')}" for name, e in ours.items())]  # fmt: skip
    lines += ["", "| ours | pipeline greedy sent/s | ×ONMT | same as translate | pipeline beam-5 sent/s | ×ONMT "
              "| same as translate |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, e in ours.items():
        if "b1_pipeline_sent_s" in e:
            lines.append(f"| {name} | {e['b1_pipeline_sent_s']} | {ratio(e['b1_pipeline_sent_s'], onmt.get('b1_sent_s'))} "
                         f"| {e['b1_pipeline_same']} | {e.get('b5_pipeline_sent_s', '–')} "
                         f"| {ratio(e.get('b5_pipeline_sent_s'), onmt.get('b5_sent_s'))} | {e.get('b5_pipeline_same', '–')} |")  # fmt: skip
    lines += ["", "| ours | generate() greedy, corpus order | hand-written greedy loop | generate() / loop "
              "| alternating, best of each |", "|---|---|---|---|---|"]  # fmt: skip
    for name, e in ours.items():
        if "generate_overhead" in e:
            best = f"{e['generate_overhead_best']:.2f}×" if e.get("generate_overhead_best") else "–"
            lines.append(f"| {name} | {e['b1_generate_corpus_order_sent_s']} sent/s | {e['handwritten_greedy_sent_s']} "
                         f"sent/s | {e['generate_overhead']:.2f}× | {best} |")  # fmt: skip
    print("\n".join(lines))
    (runs / "report.json").write_text(json.dumps({"peers": peers, "ours": ours}, indent=2))


def rounds(args) -> None:
    """The decoding rounds of `benchmark_peers.sh decode_rounds` (each round: Joey NMT, OpenNMT-py, then ours, on
    the same checkpoints, one after the other): sentences/s of each system in each round, each round's ratios, and
    their median over the rounds, then each decoding command's peak RSS by round (the peers' commands and our
    translate command). Alternating rounds spread the machine's drift over every system."""
    folder = Path(args.folder)
    peer_patterns = {"joey": r"Generation took ([\d.]+)\[sec\]", "onmt": r"Total translation time \(s\): ([\d.]+)"}
    table, ratios = [], {}
    for round_dir in sorted(folder.glob("round_*"), key=lambda p: int(p.name.split("_")[1])):
        row = {}
        for beams in (1, 5):
            for peer, pattern in peer_patterns.items():
                log = round_dir / f"{peer}_b{beams}.log"
                match = re.search(pattern, log.read_text(encoding="utf-8")) if log.exists() else None
                row[f"{peer}_b{beams}"] = round(1000 / float(match.group(1)), 1) if match else None
            for result in sorted(round_dir.glob(f"*_b{beams}.json")):
                row[result.stem] = json.loads(result.read_text())["sorted"]["sent_s"]
        table.append((round_dir.name, row))
        for name, value in row.items():
            peer_key = f"_b{name.rsplit('_b', 1)[1]}"
            if name.startswith(("joey", "onmt")) or value is None:
                continue
            for peer in peer_patterns:
                reference = row.get(peer + peer_key)
                if reference:
                    ratios.setdefault(f"{name} / {peer}", {})[round_dir.name] = value / reference
    names = sorted({name for _, row in table for name in row})
    lines = ["| round | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(str(row.get(n) or "–") for n in names) + " |" for label, row in table]
    lines += [
        "",
        "| ratio | " + " | ".join(label for label, _ in table) + " | median |",
        "|---" * (len(table) + 2) + "|",
    ]
    for key, values in sorted(ratios.items()):
        median = statistics.median(values.values())
        cells = [f"{values[label]:.2f}×" if label in values else "–" for label, _ in table]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | **{median:.2f}×** |")
    memory = {label: _round_peaks(folder / label) for label, _ in table}
    lines += _memory_lines(memory)
    print("\n".join(lines))
    (folder / "rounds.json").write_text(
        json.dumps({"rounds": dict(table), "ratios": ratios, "peak_rss_mb": memory}, indent=2)
    )


def _round_peaks(round_dir: Path) -> dict[str, float]:
    """Peak RSS (MB) of each decoding command of one round, from its `/usr/bin/time -v` file (NAME_bB.time)."""
    peaks = {path.stem: peak_rss_mb(path) for path in sorted(round_dir.glob("*_b[15].time"))}
    return {name: value for name, value in peaks.items() if value is not None}


def _memory_lines(memory: dict[str, dict[str, float]]) -> list[str]:
    """Markdown: each command's peak RSS in each round and its median, and in how many rounds each of ours peaked
    at most at Joey NMT's peak of the same round (target 3: decoding peak RSS ≤ Joey's)."""
    names = sorted({name for peaks in memory.values() for name in peaks})
    if not names:
        return []
    lines = [
        "",
        "| peak RSS MB | " + " | ".join(memory) + " | median | ≤ Joey's (rounds) |",
        "|---" * (len(memory) + 3) + "|",
    ]
    for name in names:
        values = {label: peaks[name] for label, peaks in memory.items() if name in peaks}
        beams = name.rsplit("_b", 1)[1]
        below = [values[label] <= peaks[f"joey_b{beams}"] for label, peaks in memory.items()
                 if label in values and f"joey_b{beams}" in peaks]  # fmt: skip
        cells = [f"{values[label]:,.0f}" if label in values else "–" for label in memory]
        verdict = "" if name.startswith("joey") or not below else f"{sum(below)} of {len(below)}"
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | **{statistics.median(values.values()):,.0f}** | {verdict} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("decode")
    add_decoding_arguments(d)
    d.add_argument("--reference", required=True)
    d.add_argument("--output")
    d.add_argument("--no-onednn", action="store_true", help="torch.backends.mkldnn.enabled = False")
    d.add_argument(
        "--overhead-repeats",
        type=int,
        default=4,
        help="greedy: passes of generate() and of the hand-written loop, alternating (best of each)",
    )
    d.add_argument("--translate-only", action="store_true", help="time the translate path alone (decoding rounds)")
    r = commands.add_parser("report")
    r.add_argument("--peers", default="/tmp/peers")
    r.add_argument("--runs", default="runs/benchmark_peers")
    n = commands.add_parser("rounds", help="summarise `benchmark_peers.sh decode_rounds`: each round's ratios, median")
    n.add_argument("folder")
    args = parser.parse_args()
    {"decode": decode, "report": report, "rounds": rounds}[args.command](args)


if __name__ == "__main__":
    main()
