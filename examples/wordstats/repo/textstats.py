"""Small text statistics used by the report generator."""


def word_count(text: str) -> int:
    """Number of words in ``text``; words are separated by any run of whitespace."""
    return len(text.split(" "))


def average_word_length(text: str) -> float:
    words = text.split()
    if not words:
        return 0.0
    return sum(len(w) for w in words) / len(words)
