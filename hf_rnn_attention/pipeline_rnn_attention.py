"""Text-to-text pipeline for the RNN attention model: translation, summarization, text2text-generation.

Imports only torch and transformers, so that a saved model folder carries it as Hub remote code:
`pipeline("translation", model=FOLDER_OR_REPO, trust_remote_code=True)` works where this package is not
installed (the model's `config.custom_pipelines` names this class for the three classic task names, which
transformers 5 removed from its own pipelines).
"""

import torch
from transformers import Pipeline

PIPELINE_TASK = "rnn-attention-text2text"
CLASSIC_TASKS = ("translation", "text2text-generation", "summarization")


def custom_pipelines_entry() -> dict:
    """The `config.custom_pipelines` value: this pipeline for the three classic task names. (Not for its own
    name, which `import hf_rnn_attention` registers: listed here, it would demand trust_remote_code.)"""
    entry = {
        "impl": "pipeline_rnn_attention.RNNAttentionText2TextPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    }
    return {task: dict(entry) for task in CLASSIC_TASKS}


class RNNAttentionText2TextPipeline(Pipeline):
    """Generate text from text with `model.generate()`.

    Call with a string or a list of strings, plus any generate() keyword (`num_beams`, `do_sample`, `top_k`,
    `max_new_tokens`, `num_return_sequences`, …). Results: `[{"translation_text": …}]` for translation tasks,
    `[{"summary_text": …}]` for summarization, else `[{"generated_text": …}]`. With `return_attention=True`
    each result also holds `source_tokens`, `target_tokens` and `attention` (target × source weights, the
    path of the returned hypothesis for beam search), ready for `plot_attention`.

    A list of strings is decoded like the translate command: sorted by length and, for greedy decoding, with
    continuous batching (`model.generate_continuous`, at most `batch_size` texts at a time); the results come
    back in input order and, in greedy decoding and beam search, equal the usual path's.
    """

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, list) and not inputs:
            return []  # (transformers 5's own path fails on an empty list)
        continuous = self._continuous_call(inputs, kwargs)
        if continuous is not None:
            return self._call_continuous(inputs, *continuous, batch_size=kwargs.get("batch_size"))
        result = super().__call__(inputs, **kwargs)
        # like transformers' classic text2text pipelines: one result per input in a flat list
        if isinstance(inputs, list) and all(isinstance(r, list) and len(r) == 1 for r in result):
            return [r[0] for r in result]
        return result

    def _continuous_call(self, inputs, kwargs: dict) -> tuple[dict, dict, dict] | None:
        """For a list of strings that `model.generate_continuous` can decode (sorted by length, continuous
        batching for greedy decoding), the call's preprocess parameters, generate() kwargs and postprocess
        parameters (those of `pipeline(...)` and of the call); None for what takes the usual pipeline path: other
        inputs (one string, datasets, generators) and lists asking for what that method does not return
        (attention weights, several sequences per input) or for a streamer (which would see the texts in length
        order). Sampling goes the continuous way too, in length order: seeded samples differ from the usual
        path's, as they differ with its batch size. `num_workers` has no use there (no DataLoader)."""
        if not (isinstance(inputs, list) and all(isinstance(text, str) for text in inputs)):
            return None
        if not hasattr(self.model, "generate_continuous"):
            return None
        given = {key: value for key, value in kwargs.items() if key not in ("batch_size", "num_workers")}
        preprocess, forward, postprocess = self._sanitize_parameters(**given)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**self._forward_params, **forward}
        postprocess = {**self._postprocess_params, **postprocess}
        if forward.pop("return_attention", False) or forward.get("streamer") is not None:
            return None
        generate_kwargs = self._generate_kwargs_of_call(forward)
        settings = self.model.generation_config.to_dict()
        if generate_kwargs.get("generation_config") is not None:
            settings.update(generate_kwargs["generation_config"].to_diff_dict())
        settings.update(generate_kwargs)
        if settings.get("num_return_sequences") not in (None, 1):
            return None
        return preprocess, generate_kwargs, postprocess

    def _generate_kwargs_of_call(self, generate_kwargs: dict) -> dict:
        """generate()'s kwargs for a call: the call's on top of those passed to `pipeline(...)`."""
        if hasattr(self, "_prepare_generate_kwargs"):  # transformers 5.x
            return self._prepare_generate_kwargs(generate_kwargs)
        # transformers 4.x keeps the generate() kwargs passed to `pipeline(...)` in `self.generation_config`
        if "generation_config" not in generate_kwargs and getattr(self, "generation_config", None) is not None:
            return {**generate_kwargs, "generation_config": self.generation_config}
        return generate_kwargs

    def _call_continuous(self, texts: list[str], preprocess, generate_kwargs, postprocess, batch_size=None) -> list:
        """All texts tokenized at once and decoded `batch_size` at a time by `model.generate_continuous`, which
        sorts them by their number of tokens (longest first: the least padding) and returns them in input order.
        Each text gets what the pipeline's own path gives it in greedy decoding and beam search (generate()'s
        output on that text alone)."""
        batch_size = batch_size if batch_size is not None else (self._batch_size or 1)
        max_source_length = preprocess.get("max_source_length")
        source_ids = self.tokenizer(texts, truncation=max_source_length is not None, max_length=max_source_length,
                                    return_token_type_ids=False)["input_ids"]  # fmt: skip
        generated = self.model.generate_continuous(source_ids, batch_size=batch_size, **generate_kwargs)
        return [self.postprocess({"sequences": sequence[None, None]}, **postprocess)[0] for sequence in generated]

    def _sanitize_parameters(self, return_attention=None, max_source_length=None, **generate_kwargs):
        preprocess, forward, postprocess = {}, dict(generate_kwargs), {}
        if max_source_length is not None:
            preprocess["max_source_length"] = max_source_length
        if return_attention is not None:
            forward["return_attention"] = return_attention
            postprocess["return_attention"] = return_attention
        return preprocess, forward, postprocess

    def preprocess(self, text, max_source_length=None):
        if not isinstance(text, str):
            raise ValueError(f"{type(self).__name__} takes a string or a list of strings, got {type(text).__name__}.")
        truncation = max_source_length is not None
        return self.tokenizer(
            text, return_tensors="pt", truncation=truncation, max_length=max_source_length, return_token_type_ids=False
        )

    def _forward(self, model_inputs, return_attention=False, **generate_kwargs):
        generate_kwargs = self._generate_kwargs_of_call(generate_kwargs)
        if return_attention:
            generate_kwargs.update(return_dict_in_generate=True, output_attentions=True, output_scores=True)
        input_ids = model_inputs["input_ids"]
        output = self.model.generate(
            input_ids=input_ids, attention_mask=model_inputs.get("attention_mask"), **generate_kwargs
        )
        sequences = output.sequences if return_attention else output  # (B·n, T)
        batch, returned = input_ids.shape[0], sequences.shape[0] // input_ids.shape[0]
        result = {"input_ids": input_ids, "sequences": sequences.reshape(batch, returned, -1)}
        if return_attention:
            attention = self._hypothesis_attention(output)  # (B·n, T, S)
            result["attention"] = attention.reshape(batch, returned, *attention.shape[1:])
        return result

    @staticmethod
    def _hypothesis_attention(output) -> torch.Tensor:
        """(B·n, T, S) weights of each returned hypothesis; beam search follows `beam_indices` back."""
        steps = torch.stack([step[0][:, 0] for step in output.cross_attentions], dim=1)  # (rows, T, S)
        beam_indices = getattr(output, "beam_indices", None)
        if beam_indices is None:
            return steps
        length = steps.shape[1]
        rows = beam_indices[:, :length].clamp(min=0).long()  # (B·n, T); -1 marks steps after the end
        gathered = steps[rows, torch.arange(length)[None, :]]  # (B·n, T, S)
        return gathered * (beam_indices[:, :length] >= 0)[..., None]

    def postprocess(self, model_outputs, return_attention=False):
        key = "generated_text"
        if self.task and self.task.startswith("translation"):
            key = "translation_text"
        elif self.task == "summarization":
            key = "summary_text"
        sequences = model_outputs["sequences"][0]  # (n, T)
        records = []
        for index, sequence in enumerate(sequences):
            record = {key: self.tokenizer.decode(sequence, skip_special_tokens=True).strip()}
            if return_attention:
                source = model_outputs["input_ids"][0]
                source = source[source != self.tokenizer.pad_token_id]
                target = sequence[1:]  # drop the decoder start token
                ends = (target == self.tokenizer.eos_token_id).nonzero()
                length = int(ends[0]) + 1 if len(ends) else len(target)
                record["source_tokens"] = self.tokenizer.convert_ids_to_tokens(source.tolist())
                record["target_tokens"] = self.tokenizer.convert_ids_to_tokens(target[:length].tolist())
                record["attention"] = model_outputs["attention"][0][index][:length, : len(source)].tolist()
            records.append(record)
        return records
