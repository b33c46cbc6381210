from textstats import average_word_length, word_count


def test_single_spaces():
    assert word_count("the quick brown fox") == 4


def test_runs_of_whitespace():
    assert word_count("the  quick\tbrown\n fox ") == 4


def test_empty():
    assert word_count("") == 0
    assert word_count("   ") == 0


def test_average():
    assert average_word_length("ab abcd") == 3.0
    assert average_word_length("") == 0.0
