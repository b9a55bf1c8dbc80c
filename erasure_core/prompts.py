"""Tokenisation and adversarial-token insertion: ONE mechanism for training and for probes.

A prompt gets k "slots": token positions whose embeddings are replaced by free vectors (the adversarial
soft prompt). Slots are placed on BPE tokens, not on words, so a concept that the tokenizer splits
("nudity" -> "nu" + "dity") stays whole, and "replace" swaps exactly the BPE tokens of a word.

The embeddings are inserted by a forward hook on the encoder's token-embedding module. The model then runs
its own forward pass unchanged (position embeddings, causal mask, end-of-text pooling), which works on
transformers 4.x and 5.x alike (5.x has no `inputs_embeds` argument on `CLIPTextModel.forward`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import ErasureError

INSERTIONS = ("prefix", "suffix", "replace")
# The slot token's id only matters for the pooled output, which finds the FIRST end-of-text token: a slot
# must never hold that id. "*" is an ordinary one-token word in CLIP's vocabulary.
DEFAULT_PLACEHOLDER_TEXT = "*"


@dataclass
class SlottedPrompt:
    """Token ids [1, L] (padded to the encoder window) and the positions of the adversarial slots."""

    input_ids: torch.LongTensor
    adv_positions: list[int] = field(default_factory=list)
    text: str = ""

    @property
    def k(self) -> int:
        return len(self.adv_positions)


def _content_ids(tokenizer, text: str) -> list[int]:
    """BPE token ids of `text` without start/end tokens."""
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _placeholder(tokenizer, placeholder_id: int | None) -> int:
    if placeholder_id is None:
        ids = _content_ids(tokenizer, DEFAULT_PLACEHOLDER_TEXT)
        placeholder_id = ids[0]
    if placeholder_id in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        raise ErasureError(
            f"placeholder id {placeholder_id} is the end-of-text/padding token; pick an ordinary token id"
        )
    return int(placeholder_id)


def _find_subsequence(haystack: list[int], needle: list[int]) -> int:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    return -1


def _insert_slots(content: list[int], k: int, insertion: str, replace_ids: list[int] | None, text: str,
                  replace_word: str | None, slot: int) -> tuple[list[int], int]:
    """Content ids with k slot tokens placed; returns (ids, index of the first slot within content)."""
    if insertion == "prefix":
        return [slot] * k + content, 0
    if insertion == "suffix":
        return content + [slot] * k, len(content)
    start = _find_subsequence(content, replace_ids)
    if start < 0:
        raise ErasureError(
            f"cannot replace {replace_word!r}: its tokens do not occur in the prompt {text!r}; "
            "use a word that appears in the prompt, or prefix/suffix insertion"
        )
    return content[:start] + [slot] * k + content[start + len(replace_ids) :], start


def slot_prompt(
    tokenizer,
    text: str,
    k: int = 0,
    insertion: str = "prefix",
    replace_word: str | None = None,
    placeholder_id: int | None = None,
) -> SlottedPrompt:
    """Tokenise `text` and place k adversarial slots, aligned on BPE tokens.

    - "prefix": right after the start token; "suffix": right before the end token;
    - "replace": the BPE tokens of `replace_word` (first occurrence) are replaced by the k slots.
    The result is padded to the tokenizer's window (77 for SD1) with the end/pad token, like SD1 prompts.
    """
    if insertion not in INSERTIONS:
        raise ErasureError(f"unknown insertion {insertion!r}: use one of {', '.join(INSERTIONS)}")
    if k < 0:
        raise ErasureError(f"k must be >= 0, got {k}")
    replace_ids = None
    if insertion == "replace":
        if not replace_word or not _content_ids(tokenizer, replace_word):
            raise ErasureError("insertion 'replace' needs replace_word: a word of the prompt to replace")
        replace_ids = _content_ids(tokenizer, replace_word)
    slot = _placeholder(tokenizer, placeholder_id)
    content, first = _insert_slots(_content_ids(tokenizer, text), k, insertion, replace_ids, text, replace_word, slot)
    window = int(tokenizer.model_max_length)
    needed = len(content) + 2
    if needed > window:
        raise ErasureError(
            f"prompt {text!r} with {k} adversarial tokens needs {needed} tokens but the encoder window is "
            f"{window}; shorten the prompt or lower k"
        )
    ids = [tokenizer.bos_token_id] + content + [tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (window - len(ids))
    positions = [1 + first + i for i in range(k)]
    return SlottedPrompt(torch.tensor([ids], dtype=torch.long), positions, text)


def _replace_rows(embeds: torch.Tensor, positions: list[int], adv_embeds: torch.Tensor) -> torch.Tensor:
    """`embeds` [B, L, D] with rows `positions` replaced by `adv_embeds` ([k, D] or [B, k, D])."""
    batch = embeds.shape[0]
    if adv_embeds.dim() == 2:
        adv_embeds = adv_embeds.unsqueeze(0)
    adv_embeds = adv_embeds.to(embeds.dtype).expand(batch, -1, -1)
    if adv_embeds.shape[1] != len(positions):
        raise ErasureError(f"{adv_embeds.shape[1]} adversarial embeddings for {len(positions)} slots")
    # Out of place, so the autograd graph reaches both adv_embeds and (through other rows) nothing frozen.
    out = embeds.clone()
    out[:, positions, :] = adv_embeds
    return out


@contextmanager
def adversarial_embeddings(text_encoder, positions: list[int], adv_embeds: torch.Tensor):
    """Within the block, every forward of `text_encoder` has rows `positions` of its token embeddings
    replaced by `adv_embeds`. The hook is removed on exit, even after an error."""

    def hook(_module, _inputs, output):
        return _replace_rows(output, positions, adv_embeds)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_slotted(
    text_encoder,
    slotted_or_ids: SlottedPrompt | torch.Tensor,
    adv_positions: Sequence[int] | None = None,
    adv_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder's last hidden state [B, L, D] with the slot rows set to `adv_embeds`.

    Gradients flow to `adv_embeds` and to the encoder's trainable weights. With no slots (k = 0) or no
    `adv_embeds` this is a plain encode. Batches: ids [B, L] with adv_embeds [k, D] (same for all rows) or
    [B, k, D]; ids [1, L] are broadcast to the batch of adv_embeds.
    """
    if isinstance(slotted_or_ids, SlottedPrompt):
        ids = slotted_or_ids.input_ids
        positions = list(slotted_or_ids.adv_positions if adv_positions is None else adv_positions)
    else:
        ids = slotted_or_ids
        positions = list(adv_positions or [])
    device = text_encoder.get_input_embeddings().weight.device
    ids = ids.to(device)
    if adv_embeds is not None and adv_embeds.dim() == 3 and ids.shape[0] == 1 and adv_embeds.shape[0] > 1:
        ids = ids.expand(adv_embeds.shape[0], -1)
    if not positions or adv_embeds is None:
        if positions and adv_embeds is None:
            raise ErasureError(f"prompt has {len(positions)} adversarial slots but no embeddings were given")
        return text_encoder(ids)[0]
    with adversarial_embeddings(text_encoder, positions, adv_embeds.to(device)):
        return text_encoder(ids)[0]


def embed_text(text_encoder, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Last hidden state [N, L, D] of plain prompts, WITH gradients (training the student on retain prompts).
    For no-grad conditioning use `sampling.encode_prompts`."""
    ids = tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.get_input_embeddings().weight.device))[0]


def token_embedding_table(text_encoder) -> torch.Tensor:
    """The word-embedding table [V, D] (adversarial embeddings live in this space)."""
    return text_encoder.get_input_embeddings().weight


def check_concept(tokenizer, concept: str) -> list[int]:
    """BPE ids of a concept; an error if it tokenizes to nothing (empty or only symbols the tokenizer drops)."""
    ids = _content_ids(tokenizer, concept) if concept is not None else []
    if not ids:
        raise ErasureError(
            f"concept {concept!r} tokenizes to nothing; give a word or phrase such as 'nudity' or 'Van Gogh'"
        )
    return ids
