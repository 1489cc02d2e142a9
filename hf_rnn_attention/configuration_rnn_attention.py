"""Configuration of the recurrent encoder–decoder with attention.

This file imports only ``transformers`` so that a saved model folder can load it as Hub remote code
(``trust_remote_code=True``) where the ``hf_rnn_attention`` package is not installed.
"""

from transformers import PretrainedConfig

RNN_TYPES = ("lstm", "gru")
BRIDGES = ("linear", "last", "mean", "zeros")
ATTENTION_TYPES = ("none", "dot", "scaled_dot", "general", "additive")
ATTENTION_ALIASES = {"luong": "general", "bahdanau": "additive", "multiplicative": "general", "concat": "additive"}
DECODER_STYLES = ("luong", "bahdanau")


def _choice(field: str, value, allowed, aliases=None):
    """Normalise a string option (lower case, aliases) or raise a ValueError naming the allowed values."""
    normalised = value.lower() if isinstance(value, str) else value
    if aliases and normalised in aliases:
        normalised = aliases[normalised]
    if normalised not in allowed:
        names = list(allowed) + (sorted(aliases) if aliases else [])
        raise ValueError(f"RNNAttentionConfig: `{field}` must be one of {names}, got {value!r}.")
    return normalised


def _positive_int(field: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RNNAttentionConfig: `{field}` must be an integer >= 1, got {value!r}.")
    return value


def _probability(field: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"RNNAttentionConfig: `{field}` must be a number in [0, 1], got {value!r}.")
    return float(value)


class RNNAttentionConfig(PretrainedConfig):
    r"""
    Configuration of [`RNNAttentionModel`] and [`RNNAttentionForConditionalGeneration`]: a (bi)directional
    LSTM/GRU encoder, a bridge that turns the encoder's final states into the decoder's initial state, and
    an LSTM/GRU decoder that attends over the encoder outputs (Bahdanau et al. 2015; Luong et al. 2015).
    Source and target share one vocabulary and one embedding table.

    Args:
        vocab_size (`int`, defaults to 8000): size of the shared source/target vocabulary.
        embedding_size (`int`, defaults to 256): size of the shared token embeddings.
        rnn_type (`str`, defaults to `"lstm"`): `"lstm"` or `"gru"`, for encoder and decoder.
        encoder_layers (`int`, defaults to 2): stacked encoder RNN layers.
        encoder_hidden_size (`int`, defaults to 256): encoder hidden size *per direction*; the encoder
            outputs ("memory") have size `2 * encoder_hidden_size` when `bidirectional`.
        bidirectional (`bool`, defaults to `True`): h_t = [h_fwd; h_bwd].
        decoder_layers (`int`, defaults to 1): stacked decoder RNN layers.
        decoder_hidden_size (`int`, defaults to 512): decoder hidden size.
        bridge (`str`, defaults to `"linear"`): how the decoder's initial state is made from the encoder:
            `"linear"`: tanh(W [h_fwd; h_bwd]) of the top encoder layer's final states (cell states too for
            LSTM); `"last"`: those final states unchanged; `"mean"`: the masked mean of the encoder outputs;
            `"zeros"`: zeros. `"last"` and `"mean"` need `decoder_hidden_size` == encoder output size.
        attention_type (`str`, defaults to `"general"`): the score function: `"none"` (no attention: the
            bridge's context vector is all the decoder sees), `"dot"`, `"scaled_dot"`, `"general"` (Luong's
            multiplicative score, alias `"luong"`) or `"additive"` (Bahdanau's score, alias `"bahdanau"`).
            `"dot"` and `"scaled_dot"` need `decoder_hidden_size` == encoder output size.
        decoder_style (`str`, defaults to `"luong"`): `"luong"`: step the RNN, then attend with the new state
            and form the attentional vector tanh(W_c [c_t; h_t]); `"bahdanau"`: attend with the previous state
            and feed the context into the RNN input [y_{t-1}; c_t].
        input_feeding (`bool`, defaults to `False`): Luong's input feeding: the previous attentional vector is
            concatenated to the RNN input. Only for `decoder_style="luong"` with attention.
        dropout (`float`, defaults to 0.2): dropout on embeddings, between RNN layers and before the output layer.
        tie_word_embeddings (`bool`, defaults to `True`): the output layer reuses the shared embedding (after a
            projection from the decoder size to `embedding_size` when they differ).
        teacher_forcing_ratio (`float`, defaults to 1.0): in training mode, the probability that a decoder
            step reads the gold previous token; otherwise it reads the model's own previous prediction
            (scheduled sampling, Bengio et al. 2015). A plain attribute: a callback may change it.
        label_smoothing (`float`, defaults to 0.0): the loss mixes the one-hot target with a uniform
            distribution over the vocabulary (Szegedy et al. 2016): (1 - ε) NLL + ε mean_v(-log p_v), as
            `Seq2SeqTrainingArguments(label_smoothing_factor=ε)` does, but computed only at the labelled positions.
        init_std (`float`, defaults to 0.1): weights are initialised uniformly in [-init_std, init_std].
        pad_token_id, bos_token_id, eos_token_id, decoder_start_token_id (`int`, defaults 0/1/2/1).
    """

    model_type = "rnn_attention"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache field: "cache" from transformers 5.24
    attribute_map = {"hidden_size": "decoder_hidden_size", "num_hidden_layers": "decoder_layers"}

    def __init__(
        self,
        vocab_size: int = 8000,
        embedding_size: int = 256,
        rnn_type: str = "lstm",
        encoder_layers: int = 2,
        encoder_hidden_size: int = 256,
        bidirectional: bool = True,
        decoder_layers: int = 1,
        decoder_hidden_size: int = 512,
        bridge: str = "linear",
        attention_type: str = "general",
        decoder_style: str = "luong",
        input_feeding: bool = False,
        dropout: float = 0.2,
        tie_word_embeddings: bool = True,
        teacher_forcing_ratio: float = 1.0,
        label_smoothing: float = 0.0,
        init_std: float = 0.1,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        is_encoder_decoder: bool = True,
        **kwargs,
    ):
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.embedding_size = _positive_int("embedding_size", embedding_size)
        self.rnn_type = _choice("rnn_type", rnn_type, RNN_TYPES)
        self.encoder_layers = _positive_int("encoder_layers", encoder_layers)
        self.encoder_hidden_size = _positive_int("encoder_hidden_size", encoder_hidden_size)
        self.bidirectional = bool(bidirectional)
        self.decoder_layers = _positive_int("decoder_layers", decoder_layers)
        self.decoder_hidden_size = _positive_int("decoder_hidden_size", decoder_hidden_size)
        self.bridge = _choice("bridge", bridge, BRIDGES)
        self.attention_type = _choice("attention_type", attention_type, ATTENTION_TYPES, ATTENTION_ALIASES)
        self.decoder_style = _choice("decoder_style", decoder_style, DECODER_STYLES)
        self.input_feeding = bool(input_feeding)
        self.dropout = _probability("dropout", dropout)
        self.teacher_forcing_ratio = _probability("teacher_forcing_ratio", teacher_forcing_ratio)
        self.label_smoothing = _probability("label_smoothing", label_smoothing)
        if self.label_smoothing == 1.0:
            raise ValueError("RNNAttentionConfig: `label_smoothing` must be in [0, 1): 1 ignores the targets.")
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or init_std <= 0:
            raise ValueError(f"RNNAttentionConfig: `init_std` must be a number > 0, got {init_std!r}.")
        self.init_std = float(init_std)
        self.use_cache = bool(use_cache)
        if not is_encoder_decoder:
            raise ValueError(
                "RNNAttentionConfig: `is_encoder_decoder` must be True (this is an encoder-decoder model)."
            )
        for name, value in (
            ("pad_token_id", pad_token_id),
            ("bos_token_id", bos_token_id),
            ("eos_token_id", eos_token_id),
            ("decoder_start_token_id", decoder_start_token_id),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"RNNAttentionConfig: `{name}` must be an integer in [0, vocab_size={self.vocab_size}), "
                    f"got {value!r}."
                )

        memory_size = self.encoder_output_size
        if self.attention_type in ("dot", "scaled_dot") and self.decoder_hidden_size != memory_size:
            raise ValueError(
                f"RNNAttentionConfig: attention_type={self.attention_type!r} compares the decoder state with the "
                f"encoder outputs directly, so `decoder_hidden_size` ({self.decoder_hidden_size}) must equal the "
                f"encoder output size ({memory_size} = encoder_hidden_size x {2 if self.bidirectional else 1} "
                "directions). Change the sizes or use attention_type 'general' or 'additive'."
            )
        if self.bridge in ("last", "mean") and self.decoder_hidden_size != memory_size:
            raise ValueError(
                f"RNNAttentionConfig: bridge={self.bridge!r} copies encoder states into the decoder, so "
                f"`decoder_hidden_size` ({self.decoder_hidden_size}) must equal the encoder output size "
                f"({memory_size}). Change the sizes or use bridge 'linear' or 'zeros'."
            )
        if self.input_feeding and (self.decoder_style != "luong" or self.attention_type == "none"):
            raise ValueError(
                "RNNAttentionConfig: `input_feeding` feeds Luong's attentional vector back into the RNN input, so "
                f"it needs decoder_style='luong' and an attention_type other than 'none' (got decoder_style="
                f"{self.decoder_style!r}, attention_type={self.attention_type!r})."
            )

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=True,
            tie_word_embeddings=bool(tie_word_embeddings),
            **kwargs,
        )
        # 4.x sets these in PretrainedConfig.__init__, 5.x stores unknown kwargs as attributes: set them for both.
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.tie_word_embeddings = bool(tie_word_embeddings)

    @property
    def encoder_output_size(self) -> int:
        """Size of each encoder output vector (the attention "memory"): 2 x hidden when bidirectional."""
        return self.encoder_hidden_size * (2 if self.bidirectional else 1)
