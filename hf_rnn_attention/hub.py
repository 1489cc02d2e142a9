"""Sharing a trained model on the Hugging Face Hub: the repository folder, its model card, and the upload.

`build_repo_folder` lays out everything a user of the Hub needs, without this package installed:
safetensors weights, `config.json` (with `auto_map` and `custom_pipelines`), the modeling, configuration
and pipeline code, the tokenizer, `generation_config.json`, and a README model card rendered from
`model_cards/model_card_template.md` with `ModelCardData` (language, license, datasets, metrics,
pipeline_tag, library_name, tags and model-index results from the model's `results.json`).
`push` uploads that folder with `huggingface_hub` (`create_repo`, then `upload_folder`), keeping our card
(`model.push_to_hub` would replace it with a generic one).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "model_card_template.md"
REPO_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "modeling_rnn_attention.py",
    "configuration_rnn_attention.py", "pipeline_rnn_attention.py", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json",
)  # fmt: skip
ARCHITECTURE_FIELDS = (
    "rnn_type", "bidirectional", "encoder_layers", "encoder_hidden_size", "decoder_layers", "decoder_hidden_size",
    "embedding_size", "attention_type", "decoder_style", "input_feeding", "bridge", "tie_word_embeddings",
    "vocab_size",
)  # fmt: skip


def _eval_rows(results: dict) -> list[dict]:
    rows = []
    for split, by_decoding in results.items():
        for decoding, metrics in by_decoding.items():
            rows.append({"split": split, "decoding": decoding, **{k: round(v, 2) for k, v in metrics.items()}})
    return rows


def build_card(
    model_dir: str | Path,
    repo_id: str,
    results: dict | None = None,
    language: list[str] | None = None,
    license: str = "apache-2.0",
    dataset: str | None = None,
    dataset_name: str | None = None,
    task: str = "translation",
    example: str = "September 27, 1994",
    template: str | Path = TEMPLATE,
) -> ModelCard:
    """The model card. `results`: {split: {decoding: {"bleu": …, "chrf": …, …}}}; by default the `test`
    results in the folder's `results.json` (written by `hf-rnn-attention train`)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if results is None and (model_dir / "results.json").exists():
        results = {"test": json.loads((model_dir / "results.json").read_text()).get("test", {})}
    rows = _eval_rows(results or {})
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset or "custom",
            dataset_name=dataset_name or dataset or "custom",
            dataset_split=row["split"],
            metric_type=metric,
            metric_value=row[metric],
            metric_name=f"{metric} ({row['decoding']})",
        )  # fmt: skip
        for row in rows
        for metric in ("bleu", "chrf")
        if metric in row
    ]
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        language=language,
        license=license,
        datasets=[dataset] if dataset else None,
        metrics=["bleu", "chrf"],
        pipeline_tag=task,
        library_name="transformers",
        tags=["rnn-attention", "seq2seq", "lstm" if config.get("rnn_type") == "lstm" else "gru", "attention"],
        eval_results=eval_results or None,
    )
    weights = model_dir / "model.safetensors"
    parameters = "unknown"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            parameters = f"{sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys()):,}"
    architecture = f"{config.get('rnn_type', 'lstm').upper()}, {config.get('attention_type')} attention, " \
                   f"{config.get('decoder_style')}-style decoder"  # fmt: skip
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        model_name=repo_id.split("/")[-1],
        architecture=architecture,
        example=example,
        settings=[(field, config[field]) for field in ARCHITECTURE_FIELDS if field in config],
        parameters=parameters,
        results=rows,
    )


def build_repo_folder(model_dir: str | Path, output_dir: str | Path, repo_id: str, overwrite: bool = False,
                      **card_kwargs) -> Path:  # fmt: skip
    """Copy what the Hub repository needs from a saved model folder into `output_dir`, plus the README card."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    missing = [
        name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (model_dir / name).exists()
    ]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a saved model folder: missing {', '.join(missing)}.")
    config = json.loads((model_dir / "config.json").read_text())
    if "auto_map" not in config or "custom_pipelines" not in config:
        raise ValueError(f"{model_dir}/config.json lacks auto_map/custom_pipelines: re-save it with this version.")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; pass overwrite=True (--overwrite) to replace its files.")
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, output_dir / name)
    build_card(model_dir, repo_id, **card_kwargs).save(output_dir / "README.md")
    return output_dir


def push(model_dir, repo_id: str, folder=None, private: bool = False, create_pr: bool = False,
         dry_run: bool = False, overwrite: bool = False, token: str | None = None, **card_kwargs) -> Path:  # fmt: skip
    """Build the repository folder and upload it (`create_repo`, then `upload_folder`); `dry_run` only builds."""
    folder = Path(folder or Path(model_dir) / "hub_upload")
    build_repo_folder(model_dir, folder, repo_id, overwrite=overwrite, **card_kwargs)
    if dry_run:
        return folder
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, create_pr=create_pr,
                      commit_message="Upload RNN attention model")  # fmt: skip
    return folder
