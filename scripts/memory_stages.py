"""Where a decoding process's peak memory comes from: resident memory at each stage of what the translate command
does (imports, loading the model, each encoder call, the end), split into anonymous and file-backed memory, with
glibc's heap (in use / free but resident) and, at the end, the mappings that hold the most.

    python scripts/memory_stages.py runs/benchmark_peers/bahdanau --source $PEERS/data/test.raw.de [--num-beams 5]

Linux only (/proc/self/status, /proc/self/smaps); the heap figures need glibc ≥ 2.33 (mallinfo2) and are left out
elsewhere. BENCHMARKS.md §4 ("Greedy decoding memory") quotes it.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util

from decoding_args import add_decoding_arguments  # scripts/: argparse only


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )  # fmt: skip
    ]


def _mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc.mallinfo2
    except (OSError, AttributeError):
        return None


MALLINFO2 = _mallinfo2()


def stage(label: str) -> None:
    """Print the peak and current resident memory (MB), anonymous and file-backed, and glibc's heap."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) // 1024
    text = (
        f"{label:24s} peak {fields['VmHWM']:4d}  resident {fields['VmRSS']:4d}  "
        f"(anonymous {fields['RssAnon']:4d}, file-backed {fields['RssFile']:4d})"
    )
    if MALLINFO2 is not None:
        heap = MALLINFO2()
        text += f"  heap {heap.arena >> 20:4d}: in use {heap.uordblks >> 20:4d}, free {heap.fordblks >> 20:3d}"
    print(text, flush=True)


def largest_mappings(count: int = 8) -> list[tuple[int, str]]:
    """The mappings (files, [heap], [anon]) holding the most resident memory, in MB."""
    resident = collections.Counter()
    name = "[anon]"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping's header line
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts and parts[0] == "Rss:":
                resident[name] += int(parts[1])
    return [(kb // 1024, mapping) for mapping, kb in resident.most_common(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decoding_arguments(parser)
    parser.add_argument("--encoder-calls", type=int, default=3, help="print a stage after each of the first N")
    args = parser.parse_args()

    stage("start")
    from hf_rnn_attention.cli import load_trained
    from hf_rnn_attention.inference import translate

    stage("imports")
    model, tokenizer = load_trained(args.model_dir)
    stage("model loaded")
    with open(args.source, encoding="utf-8") as source:
        texts = [line.rstrip("\n") for line in source]

    calls = 0

    def after_encoder(module, inputs, outputs):
        nonlocal calls
        calls += 1
        if calls <= args.encoder_calls:
            stage(f"after encoder call {calls}")

    model.get_encoder().register_forward_hook(after_encoder)
    translate(model, tokenizer, texts, batch_size=args.batch_size, num_beams=args.num_beams,
              max_new_tokens=args.max_new_tokens)  # fmt: skip
    stage(f"translated ({calls} enc.)")
    print("largest mappings at the end (MB):")
    for megabytes, mapping in largest_mappings():
        print(f"  {megabytes:4d}  {mapping}")


if __name__ == "__main__":
    main()
