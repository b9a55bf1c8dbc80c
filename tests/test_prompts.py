"""Adversarial slots: BPE alignment, the embedding hook, gradients, clear errors."""

import pytest
import torch

from erasure_core.errors import ErasureError
from erasure_core.prompts import check_concept, embed_text, encode_slotted, slot_prompt


def _tokens(tokenizer, slotted):
    return tokenizer.convert_ids_to_tokens(slotted.input_ids[0].tolist())


def test_prefix_slots_follow_start_token_and_keep_multi_token_concept_whole(tiny_model):
    tok = tiny_model.tokenizer
    slotted = slot_prompt(tok, "nudity", k=2, insertion="prefix")
    tokens = _tokens(tok, slotted)
    assert slotted.adv_positions == [1, 2]
    # "nudity" is two BPE tokens: both follow the slots, unsplit.
    assert tokens[:6] == ["<|startoftext|>", "*</w>", "*</w>", "nu", "dity</w>", "<|endoftext|>"]
    assert slotted.input_ids.shape == (1, 77)


def test_suffix_slots_precede_end_token(tiny_model):
    tok = tiny_model.tokenizer
    slotted = slot_prompt(tok, "Van Gogh", k=3, insertion="suffix")
    tokens = _tokens(tok, slotted)
    assert slotted.adv_positions == [3, 4, 5]
    assert tokens[:7] == ["<|startoftext|>", "van</w>", "gogh</w>", "*</w>", "*</w>", "*</w>", "<|endoftext|>"]


def test_replace_swaps_exactly_the_bpe_tokens_of_the_word(tiny_model):
    tok = tiny_model.tokenizer
    slotted = slot_prompt(tok, "a nudity painting", k=1, insertion="replace", replace_word="nudity")
    tokens = _tokens(tok, slotted)
    assert slotted.adv_positions == [2]
    assert tokens[:5] == ["<|startoftext|>", "a</w>", "*</w>", "painting</w>", "<|endoftext|>"]
    multi = slot_prompt(tok, "a photo of a garbage truck", k=3, insertion="replace", replace_word="garbage truck")
    assert multi.adv_positions == [5, 6, 7]
    assert _tokens(tok, multi)[1:9] == ["a</w>", "photo</w>", "of</w>", "a</w>", "*</w>", "*</w>", "*</w>",
                                        "<|endoftext|>"]


def test_errors_say_what_to_do(tiny_model):
    tok = tiny_model.tokenizer
    with pytest.raises(ErasureError, match="window"):
        slot_prompt(tok, "word " * 70, k=10)
    with pytest.raises(ErasureError, match="do not occur"):
        slot_prompt(tok, "a cat", k=1, insertion="replace", replace_word="dog")
    with pytest.raises(ErasureError, match="unknown insertion"):
        slot_prompt(tok, "a cat", k=1, insertion="middle")
    with pytest.raises(ErasureError, match="tokenizes to nothing"):
        check_concept(tok, "   ")


def test_hook_changes_only_slot_rows_and_matches_plain_encode(tiny_model):
    encoder, tok = tiny_model.text_encoder, tiny_model.tokenizer
    slotted = slot_prompt(tok, "a photo of a garbage truck", k=2, insertion="suffix")
    plain = encoder(slotted.input_ids)[0]
    table = encoder.get_input_embeddings().weight
    # Inserting the placeholder's own embedding must reproduce the plain encode exactly.
    same = encode_slotted(encoder, slotted, adv_embeds=table[slotted.input_ids[0, slotted.adv_positions]])
    assert torch.equal(same, plain)
    # Random embeddings: the token-embedding rows outside the slots are untouched...
    captured = {}
    handle = encoder.embeddings.register_forward_hook(lambda m, i, o: captured.setdefault("emb", o))
    adv = torch.randn(2, table.shape[1])
    hidden = encode_slotted(encoder, slotted, adv_embeds=adv)
    handle.remove()
    with torch.no_grad():
        reference_rows = encoder.embeddings(slotted.input_ids)
    keep = [i for i in range(77) if i not in slotted.adv_positions]
    assert torch.equal(captured["emb"][0, keep], reference_rows[0, keep])
    assert not torch.equal(captured["emb"][0, slotted.adv_positions], reference_rows[0, slotted.adv_positions])
    # ...and the causal mask keeps every position before the first slot identical to the plain encode.
    first = slotted.adv_positions[0]
    assert torch.equal(hidden[0, :first], plain[0, :first])
    assert not torch.allclose(hidden[0, first:], plain[0, first:])
    # The hook is gone afterwards.
    assert torch.equal(encoder(slotted.input_ids)[0], plain)


def test_gradients_reach_adv_embeddings_and_encoder_weights(tiny_model):
    encoder = tiny_model.text_encoder
    encoder.requires_grad_(True)
    slotted = slot_prompt(tiny_model.tokenizer, "nudity", k=1)
    adv = torch.randn(1, 32, requires_grad=True)
    hidden = encode_slotted(encoder, slotted, adv_embeds=adv)
    (hidden ** 2).mean().backward()
    assert adv.grad is not None and adv.grad.abs().sum() > 0
    assert encoder.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_batched_adv_embeddings_and_embed_text(tiny_model):
    encoder, tok = tiny_model.text_encoder, tiny_model.tokenizer
    slotted = slot_prompt(tok, "nudity", k=1)
    adv = torch.randn(3, 1, 32)
    batched = encode_slotted(encoder, slotted, adv_embeds=adv)
    assert batched.shape == (3, 77, 32)
    single = encode_slotted(encoder, slotted, adv_embeds=adv[1])
    assert torch.allclose(batched[1], single[0], atol=1e-6)
    plain = embed_text(encoder, tok, ["nudity", ""])
    assert plain.shape == (2, 77, 32)
    assert torch.equal(plain[:1], encode_slotted(encoder, slot_prompt(tok, "nudity")))
