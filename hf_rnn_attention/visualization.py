"""Attention heatmaps: which source tokens each output token attended to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

_HANGUL_FONTS = ("Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Nanum Gothic", "UnDotum", "Baekmuk Dotum")


def _register_packaged_hangul_font() -> None:
    """Make NanumGothic from the `koreanize-matplotlib` package known to matplotlib, without importing that
    package (its import changes matplotlib's global settings)."""
    import importlib.util

    from matplotlib import font_manager

    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or spec.origin is None:
        return
    font = Path(spec.origin).parent / "fonts" / "NanumGothic.ttf"
    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    if font.exists() and str(font) not in known:
        font_manager.fontManager.addfont(str(font))


def _font_family() -> list[str]:
    """A font list that shows Korean (a system CJK font, else the packaged NanumGothic), then matplotlib's
    default for Latin text and symbols."""
    from matplotlib import font_manager

    _register_packaged_hangul_font()
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return [name for name in _HANGUL_FONTS if name in installed] + ["DejaVu Sans"]


def readable_token(token: str) -> str:
    """SentencePiece-style `▁word` → `word` (with a leading space mark kept visible as `_`)."""
    return token.replace("▁", "_") if token != "▁" else "_"


def plot_attention(
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    weights,
    title: str | None = None,
    path: str | Path | None = None,
):
    """Heatmap of `weights` (target_len × source_len): rows are output tokens, columns input tokens.

    Returns the matplotlib Figure; saves it as PNG (or any matplotlib format) when `path` is given.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    weights = torch.as_tensor(weights, dtype=torch.float32).detach().cpu().numpy()
    if weights.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"weights have shape {weights.shape}, expected (target_len={len(target_tokens)}, "
            f"source_len={len(source_tokens)})."
        )
    with plt.rc_context({"font.family": _font_family()}):
        width = max(4.0, 0.45 * len(source_tokens) + 2.0)
        height = max(3.0, 0.4 * len(target_tokens) + 1.5)
        figure, axis = plt.subplots(figsize=(width, height))
        image = axis.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_xticks(range(len(source_tokens)))
        axis.set_xticklabels([readable_token(t) for t in source_tokens], rotation=60, ha="right")
        axis.set_yticks(range(len(target_tokens)))
        axis.set_yticklabels([readable_token(t) for t in target_tokens])
        axis.set_xlabel("source")
        axis.set_ylabel("output")
        if title:
            axis.set_title(title)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
    return figure


@torch.inference_mode()
def greedy_attention(model, tokenizer, text: str, max_new_tokens: int = 64):
    """Greedy-decode one text and return (source tokens, output tokens, weights (output × source))."""
    batch = tokenizer([text], return_tensors="pt").to(next(model.parameters()).device)
    model.eval()
    out = model.generate(
        **batch,
        max_length=max_new_tokens + 1,
        num_beams=1,
        do_sample=False,
        return_dict_in_generate=True,
        output_attentions=True,
    )
    weights = torch.cat([step[0] for step in out.cross_attentions], dim=1)[0]  # (T, S)
    generated = out.sequences[0, 1:]  # drop the decoder start token
    source_tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    target_tokens = tokenizer.convert_ids_to_tokens(generated.tolist())
    keep = len(target_tokens)
    if tokenizer.eos_token_id in generated.tolist():
        keep = generated.tolist().index(tokenizer.eos_token_id) + 1
    return source_tokens, target_tokens[:keep], weights[:keep]
