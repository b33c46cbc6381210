from agent.context.tokens import count_one, count_tokens, encode, load_tokenizer, tokenizer_path


def test_tokenizer_loads_once_from_the_package() -> None:
    assert tokenizer_path().name == "tokenizer.json"
    assert load_tokenizer() is load_tokenizer()


def test_count_tokens_matches_encode_and_adds_no_special_tokens() -> None:
    texts = ["def main():\n    return 0\n", "", "héllo wörld 你好", "<｜User｜>"]
    counts = count_tokens(texts)
    assert counts == [len(encode(t)) for t in texts]
    assert counts[1] == 0
    assert counts[3] == 1  # special-token text is one id, and no BOS is prepended
    assert count_one("x") == 1
    assert count_tokens([]) == []
