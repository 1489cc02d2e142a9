"""The `hf-rnn-attention` command line: train, evaluate, translate, plot, demo.

    hf-rnn-attention demo                                  # date normalisation, trained on CPU in minutes
    hf-rnn-attention train --config configs/date.yaml --set training.num_train_epochs=3
    hf-rnn-attention evaluate runs/date --config configs/date.yaml --num-beams 1 5
    echo "September 27, 1994" | hf-rnn-attention translate runs/date
    hf-rnn-attention plot runs/date "27 Sep 1994" --output attention.png
    hf-rnn-attention tokenizer --files train.de train.en --vocab-size 8000 --output my-tokenizer
    hf-rnn-attention push runs/date user/date-normaliser --dry-run          # the Hub repository folder only

A recipe (YAML) has the sections `model` (a preset from configs/ plus any RNNAttentionConfig field),
`data` (see hf_rnn_attention.data.load_data), `tokenizer` (see hf_rnn_attention.tokenization),
`training` (Seq2SeqTrainingArguments), and optionally `scheduled_sampling`, `early_stopping_patience`,
`max_source_length`, `max_target_length`, `evaluate` (`num_beams`: list), `seed`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import yaml

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class _RecipeLoader(yaml.SafeLoader):
    """YAML with only true/false as booleans (as in YAML 1.2): `eval_strategy: no` stays the string "no"."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_RecipeLoader)


RECIPE_KEYS = {
    "model", "data", "tokenizer", "training", "scheduled_sampling", "early_stopping_patience",
    "max_source_length", "max_target_length", "evaluate", "seed", "examples",
}  # fmt: skip


def resolve_config_path(name: str | Path, suffixes=(".yaml", ".yml", ".json")) -> Path:
    """A path as given, or a name in the repository's configs/ folder (`luong` → configs/luong.json)."""
    path = Path(name)
    if path.exists():
        return path
    for suffix in ("", *suffixes):
        candidate = REPO_CONFIGS / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"No config file {str(name)!r} (looked as a path and in {REPO_CONFIGS}).")


def load_recipe(path: str | Path) -> dict:
    recipe = parse_yaml(resolve_config_path(path).read_text()) or {}
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise ValueError(f"Unknown recipe section(s) {sorted(unknown)} in {path}; allowed: {sorted(RECIPE_KEYS)}.")
    return recipe


def apply_overrides(recipe: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (value parsed as YAML) applied to a copy of the recipe."""
    recipe = copy.deepcopy(recipe)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}.")
        dotted, value = item.split("=", 1)
        keys = dotted.split(".")
        if keys[0] not in RECIPE_KEYS:
            raise ValueError(f"--set {item!r}: unknown section {keys[0]!r}; allowed: {sorted(RECIPE_KEYS)}.")
        node = recipe
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = parse_yaml(value)
    return recipe


def build_model_config(model_section: dict, tokenizer):
    from .configuration_rnn_attention import RNNAttentionConfig

    section = dict(model_section or {})
    preset = section.pop("preset", "luong")
    known = set(RNNAttentionConfig().to_dict())
    unknown = sorted(set(section) - known)
    if unknown:  # PretrainedConfig would keep a misspelt setting as an unused attribute
        raise ValueError(f"Unknown model setting(s) {unknown}; allowed: preset and {sorted(known)}.")
    settings = json.loads(resolve_config_path(preset, (".json",)).read_text())
    settings.pop("model_type", None)
    settings.update(section)
    settings.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    return RNNAttentionConfig(**settings)


def _refuse_to_overwrite(output_dir: Path, overwrite: bool, resume) -> None:
    if resume or overwrite or not output_dir.exists():
        return
    saved = [p.name for p in output_dir.iterdir() if p.name in ("config.json", "model.safetensors")]
    saved += [p.name for p in output_dir.glob("checkpoint-*")]
    if saved:
        raise SystemExit(
            f"{output_dir} already holds a trained model ({', '.join(sorted(saved)[:3])}…). Pass --overwrite to "
            "replace it, --resume to continue its last checkpoint, or choose another --output-dir."
        )


def run_training(recipe: dict, overwrite: bool = False, resume: str | bool | None = None, log=print):
    """Data → tokenizer → model → Seq2SeqTrainer → save → test-set evaluation.

    Returns `(trainer, results)`. Runs unchanged under `torchrun` (DDP): every process trains, the first one
    saves and evaluates."""
    import torch
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        EarlyStoppingCallback,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from .data import load_data
    from .modeling_rnn_attention import RNNAttentionForConditionalGeneration
    from .tokenization import save_tokenizer, tokenizer_from_file, train_tokenizer_from_dataset
    from .training import (
        RNNAttentionTrainer,
        ScheduledSamplingCallback,
        TeacherForcingSchedule,
        build_compute_metrics,
        check_cpu_bf16,
        text_metrics,
        tokenize_dataset,
        training_arguments,
        translate,
    )

    seed = int(recipe.get("seed", 0))
    set_seed(seed)
    training_section = dict(recipe.get("training") or {})
    output_dir = Path(training_section.setdefault("output_dir", "runs/model"))
    _refuse_to_overwrite(output_dir, overwrite, resume)
    training_section.setdefault("seed", seed)
    training_section.setdefault("report_to", "none")
    if not torch.cuda.is_available():  # pinned memory only helps host-to-GPU copies (and warns without a GPU)
        training_section.setdefault("dataloader_pin_memory", False)

    started = time.perf_counter()
    data = load_data(recipe["data"], seed=seed)
    log("data: " + ", ".join(f"{split} {len(rows):,}" for split, rows in data.items()))

    tokenizer_section = dict(recipe.get("tokenizer") or {})
    if resume:  # continue with the vocabulary the checkpoint was trained with, never a retrained one
        checkpoint = resume if isinstance(resume, str) else get_last_checkpoint(str(output_dir))
        if checkpoint is None:
            raise SystemExit(f"--resume: no checkpoint-* folder in {output_dir} to continue from.")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    elif "path" in tokenizer_section:  # a saved tokenizer folder, or a `tokenizers` JSON file (e.g. a shared BPE)
        path = Path(tokenizer_section.pop("path"))
        tokenizer = tokenizer_from_file(path) if path.suffix == ".json" else AutoTokenizer.from_pretrained(path)
    else:
        tokenizer = train_tokenizer_from_dataset(data["train"], **tokenizer_section)
    log(f"tokenizer: {len(tokenizer):,} pieces")

    model_section = dict(recipe.get("model") or {})
    if "label_smoothing_factor" in training_section:  # computed by the model: only at labelled positions
        if "label_smoothing" in model_section:
            raise SystemExit("Give label smoothing once: model.label_smoothing or training.label_smoothing_factor.")
        model_section["label_smoothing"] = training_section.pop("label_smoothing_factor")
    config = build_model_config(model_section, tokenizer)
    model = RNNAttentionForConditionalGeneration(config)
    log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters "
        f"({config.rnn_type}, attention={config.attention_type}, decoder_style={config.decoder_style})")  # fmt: skip

    max_source = int(recipe.get("max_source_length", 128))
    max_target = int(recipe.get("max_target_length", max_source))
    tokenized = {split: tokenize_dataset(rows, tokenizer, max_source, max_target) for split, rows in data.items()}

    args = training_arguments(**training_section)
    check_cpu_bf16(args, log)
    callbacks = []
    if recipe.get("scheduled_sampling"):
        callbacks.append(ScheduledSamplingCallback(TeacherForcingSchedule(**recipe["scheduled_sampling"])))
    if recipe.get("early_stopping_patience"):
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=int(recipe["early_stopping_patience"])))
    trainer = RNNAttentionTrainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=build_compute_metrics(tokenizer) if args.predict_with_generate else None,
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    training_seconds = time.perf_counter() - started
    trainer.save_model(str(output_dir))  # the first process only
    if not trainer.is_world_process_zero():
        return trainer, None
    save_tokenizer(tokenizer, output_dir)

    results = {
        "output_dir": str(output_dir),
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "total_runtime_s": training_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test": {},
    }
    if "test" in data:
        sources, references = data["test"]["source"], data["test"]["target"]
        for beams in (recipe.get("evaluate") or {}).get("num_beams", [1]):
            hypotheses = translate(trainer.model, tokenizer, sources, batch_size=args.per_device_eval_batch_size,
                                   max_source_length=max_source, num_beams=int(beams))  # fmt: skip
            results["test"][f"beam{beams}"] = text_metrics(hypotheses, references)
            log(f"test, beam {beams}: " + ", ".join(f"{k} {v:.2f}" for k, v in results["test"][f"beam{beams}"].items()))
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return trainer, results


# ───────────────────────────────────────────────── commands ─────────────────────────────────────────────────


def load_trained(model_dir):
    import torch
    from transformers import AutoTokenizer

    from .modeling_rnn_attention import RNNAttentionForConditionalGeneration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = RNNAttentionForConditionalGeneration.from_pretrained(model_dir).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def cmd_train(args) -> None:
    recipe = apply_overrides(load_recipe(args.config), args.set)
    if args.output_dir:
        recipe.setdefault("training", {})["output_dir"] = args.output_dir
    run_training(recipe, overwrite=args.overwrite, resume=args.resume)


def cmd_evaluate(args) -> None:
    from .data import load_data
    from .inference import text_metrics, translate

    model, tokenizer = load_trained(args.model_dir)
    if args.source:
        sources = Path(args.source).read_text(encoding="utf-8").splitlines()
        references = Path(args.reference).read_text(encoding="utf-8").splitlines()
    else:
        recipe = apply_overrides(load_recipe(args.config), args.set)
        split = load_data(recipe["data"], seed=int(recipe.get("seed", 0)))[args.split]
        sources, references = split["source"], split["target"]
    results = {}
    for beams in args.num_beams:
        hypotheses = translate(model, tokenizer, sources, batch_size=args.batch_size, num_beams=beams,
                               max_new_tokens=args.max_new_tokens)  # fmt: skip
        results[f"beam{beams}"] = text_metrics(hypotheses, references)
    print(json.dumps(results, indent=2))


def cmd_translate(args) -> None:
    from .inference import translate

    model, tokenizer = load_trained(args.model_dir)
    stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
    lines = [line.rstrip("\n") for line in stream]
    for line in translate(model, tokenizer, lines, batch_size=args.batch_size, num_beams=args.num_beams,
                          max_new_tokens=args.max_new_tokens):  # fmt: skip
        print(line)


def cmd_plot(args) -> None:
    from .visualization import greedy_attention, plot_attention

    model, tokenizer = load_trained(args.model_dir)
    source, target, weights = greedy_attention(model, tokenizer, args.text)
    plot_attention(source, target, weights, title=args.text, path=args.output)
    print(f"{args.text} → {tokenizer.convert_tokens_to_string(target[:-1]).strip()}  (heatmap: {args.output})")


def cmd_push(args) -> None:
    from .hub import push

    folder = push(
        args.model_dir, args.repo_id, folder=args.folder, private=args.private, create_pr=args.create_pr,
        dry_run=args.dry_run, overwrite=args.overwrite, language=args.language, license=args.license,
        dataset=args.dataset, dataset_name=args.dataset_name, task=args.task,
    )  # fmt: skip
    print(f"{'wrote' if args.dry_run else 'uploaded'} {folder}" + ("" if args.dry_run else f" to {args.repo_id}"))


def cmd_tokenizer(args) -> None:
    from .tokenization import main as tokenizer_main

    tokenizer_main(args.arguments)


def cmd_demo(args) -> None:
    from .inference import translate
    from .visualization import greedy_attention, plot_attention

    recipe = apply_overrides(load_recipe("date"), args.set)
    recipe.setdefault("training", {})["output_dir"] = args.output_dir
    _, results = run_training(recipe, overwrite=args.overwrite)
    model, tokenizer = load_trained(args.output_dir)
    examples = recipe.get("examples") or ["September 27, 1994"]
    print("\nconversions:")
    for text, output in zip(examples, translate(model, tokenizer, examples), strict=True):
        print(f"  {text:32s} → {output}")
    heatmap = Path(args.output_dir) / "attention.png"
    source, target, weights = greedy_attention(model, tokenizer, examples[0])
    plot_attention(source, target, weights, title=examples[0], path=heatmap)
    accuracy = results["test"].get("beam1", {}).get("exact_match")
    print(f"\nheld-out exact match (greedy): {accuracy:.2f}%   total time: {results['total_runtime_s']:.0f} s")
    print(f"model and tokenizer: {args.output_dir}   attention heatmap: {heatmap}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-rnn-attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a recipe (YAML)")
    train.add_argument("--config", required=True, help="recipe path or name in configs/ (e.g. date, multi30k_de_en)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the recipe")
    train.add_argument("--output-dir", help="shortcut for --set training.output_dir=…")
    train.add_argument("--overwrite", action="store_true", help="replace a model already in the output folder")
    train.add_argument("--resume", nargs="?", const=True, default=None, help="continue from the last (or a) checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("evaluate", help="sacreBLEU, chrF and exact match of a saved model")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--config", help="recipe whose data section gives the evaluation split")
    evaluate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--source", help="a source file (one sentence a line) instead of --config")
    evaluate.add_argument("--reference", help="the reference file for --source")
    evaluate.add_argument("--num-beams", type=int, nargs="+", default=[1, 5])
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--max-new-tokens", type=int, default=128)
    evaluate.set_defaults(func=cmd_evaluate)

    translate = commands.add_parser("translate", help="translate a file or stdin to stdout with a saved model")
    translate.add_argument("model_dir")
    translate.add_argument("--input", help="input file (default: stdin)")
    translate.add_argument("--num-beams", type=int, default=5)
    translate.add_argument("--batch-size", type=int, default=64)
    translate.add_argument("--max-new-tokens", type=int, default=128)
    translate.set_defaults(func=cmd_translate)

    plot = commands.add_parser("plot", help="attention heatmap of one sentence (greedy decoding)")
    plot.add_argument("model_dir")
    plot.add_argument("text")
    plot.add_argument("--output", default="attention.png")
    plot.set_defaults(func=cmd_plot)

    push = commands.add_parser(
        "push", help="build the Hub repository folder (weights, code, tokenizer, card) and upload it"
    )
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="user/name on the Hub")
    push.add_argument("--folder", help="where to build the repository folder (default MODEL_DIR/hub_upload)")
    push.add_argument("--dry-run", action="store_true", help="build the folder only")
    push.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --folder")
    push.add_argument("--private", action="store_true")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.add_argument("--language", nargs="+", help="languages for the card, e.g. de en")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--dataset", help="Hub dataset id for the card, e.g. bentrevett/multi30k")
    push.add_argument("--dataset-name", help="human-readable dataset name for the results")
    push.add_argument("--task", default="translation", help="pipeline_tag and model-index task type")
    push.set_defaults(func=cmd_push)

    tokenizer = commands.add_parser(
        "tokenizer", add_help=False, help="train a joint subword tokenizer on text files (--help for its options)"
    )
    tokenizer.set_defaults(func=cmd_tokenizer)  # its options are parsed by hf_rnn_attention.tokenization.main

    demo = commands.add_parser("demo", help="train the built-in date-normalisation model and use it")
    demo.add_argument("--output-dir", default="runs/date-demo")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "tokenizer":
        args.arguments = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "evaluate" and not (args.config or (args.source and args.reference)):
        raise SystemExit("evaluate needs --config (and --split) or both --source and --reference.")
    args.func(args)


if __name__ == "__main__":
    main()
