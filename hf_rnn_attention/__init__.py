"""hf_rnn_attention: the classic BiLSTM encoder + attention decoder as a native Hugging Face transformers model.

Importing the package registers the model with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForSeq2SeqLM`) and the text-to-text pipeline under the task "rnn-attention-text2text", and marks the classes for `register_for_auto_class`, so that every saved folder
carries `auto_map` and the code files and loads with `trust_remote_code=True` where this package is absent.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_rnn_attention import RNNAttentionConfig
from .modeling_rnn_attention import (
    RNNAttentionCache,
    RNNAttentionForConditionalGeneration,
    RNNAttentionModel,
    RNNAttentionPreTrainedModel,
)
from .pipeline_rnn_attention import PIPELINE_TASK, RNNAttentionText2TextPipeline

__version__ = "0.1.0"

AutoConfig.register(RNNAttentionConfig.model_type, RNNAttentionConfig, exist_ok=True)
AutoModel.register(RNNAttentionConfig, RNNAttentionModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RNNAttentionConfig, RNNAttentionForConditionalGeneration, exist_ok=True)
RNNAttentionConfig.register_for_auto_class()
RNNAttentionModel.register_for_auto_class("AutoModel")
RNNAttentionForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=RNNAttentionText2TextPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
)

__all__ = [
    "RNNAttentionCache",
    "RNNAttentionConfig",
    "RNNAttentionForConditionalGeneration",
    "RNNAttentionModel",
    "RNNAttentionPreTrainedModel",
    "RNNAttentionText2TextPipeline",
]
