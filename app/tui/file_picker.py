"""The @-file picker: an OptionList of fuzzy matches shown above the prompt."""

from __future__ import annotations

from textual.widgets import OptionList

from app.tui.fuzzy import fuzzy_rank


class FilePicker(OptionList):
    DEFAULT_CLASSES = "file-picker"
    can_focus = False      # the prompt keeps focus and drives it with keys

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.files: list[str] = []
        self.display = False

    def show_matches(self, query: str) -> bool:
        matches = fuzzy_rank(query, self.files, limit=12)
        self.clear_options()
        if not matches:
            self.display = False
            return False
        self.add_options(matches)
        self.highlighted = 0
        self.display = True
        return True

    def hide(self) -> None:
        self.display = False

    @property
    def choice(self) -> str | None:
        option = self.highlighted_option
        return str(option.prompt) if option is not None else None
