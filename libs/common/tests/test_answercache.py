"""Answer cache keys: the same question in other words of case and spacing shares a key;
brand, top_k and the brand's generation each change it."""

from __future__ import annotations

from helpline.common.answercache import ALL_BRANDS, answer_key, generation_key, normalise


def test_normalise_folds_case_spacing_and_trailing_punctuation() -> None:
    assert normalise("  How do I   RESET it?! ") == "how do i reset it"
    assert normalise("What is v1.2") == "what is v1.2"


def test_every_part_of_the_key_matters() -> None:
    base = answer_key("How do I reset?", "acme", 5, 7)
    assert answer_key("how do i reset", "acme", 5, 7) == base
    assert answer_key("How do I reset?", "globex", 5, 7) != base
    assert answer_key("How do I reset?", None, 5, 7) != base
    assert answer_key("How do I reset?", "acme", 3, 7) != base
    assert answer_key("How do I reset?", "acme", 5, 8) != base


def test_generation_keys_are_valid_kv_keys_per_brand() -> None:
    assert generation_key(None) == ALL_BRANDS
    assert generation_key("acme") != generation_key("Acme")
    assert generation_key("a.b-c_d").replace("_", "").isalnum()
