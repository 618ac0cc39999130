"""Count wording shared by the library's and the command's messages."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 image"``, ``"3 images"``: ``count`` and the noun in the number it needs
    (``nouns``: an irregular plural; default ``noun + "s"``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
