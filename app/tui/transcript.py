"""The transcript: one widget per user message, reply and tool call, in a VerticalScroll
anchored to the bottom (it stays pinned until the user scrolls up). Old widgets beyond
``max_widgets`` are pruned from the top so long sessions stay responsive."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from agent.events import CompactionEvent
from app.tui.status import human
from app.tui.tool_card import ToolCard


class UserMessage(Static):
    DEFAULT_CLASSES = "user-message"


class Notice(Static):
    """A line from the app itself (slash-command output, errors, turn ends)."""

    DEFAULT_CLASSES = "notice"


class CompactionCard(Static):
    """Old tool outputs were archived (automatic compaction or /compact)."""

    DEFAULT_CLASSES = "compaction-card"

    def __init__(self, event: CompactionEvent) -> None:
        self.event = event
        super().__init__(compaction_text(event))


def compaction_text(event: CompactionEvent, shown: int = 8) -> Text:
    ids = ", ".join(event.ids[:shown]) + (f" … (+{len(event.ids) - shown})"
                                          if len(event.ids) > shown else "")
    text = Text("⇣ ", style="bold cyan")
    text.append("/compact" if event.manual else "compacted", style="bold")
    text.append(f": archived {len(event.ids)} tool output{'s' if len(event.ids) != 1 else ''} ")
    text.append(ids, style="cyan")
    text.append(f" · {human(event.tokens_before)} → {human(event.tokens_after)} tokens")
    text.append(" · recall(id) brings one back", style="dim")
    return text


class AssistantReply(Markdown):
    DEFAULT_CLASSES = "assistant-reply"


class Reasoning(Static):
    DEFAULT_CLASSES = "reasoning"


class Transcript(VerticalScroll):
    def __init__(self, max_widgets: int = 300, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_widgets = max_widgets
        self.cards: dict[str, ToolCard] = {}
        self._reply: AssistantReply | None = None
        self._stream: MarkdownStream | None = None
        self._reasoning: Reasoning | None = None

    def on_mount(self) -> None:
        self.anchor()

    async def _add(self, widget: Widget) -> Widget:
        await self.mount(widget)
        self._prune()
        return widget

    def _prune(self) -> None:
        extra = len(self.children) - self.max_widgets
        if extra > 0:
            old = list(self.children[:extra])
            for w in old:
                if isinstance(w, ToolCard):
                    self.cards.pop(w.call_id, None)
            self.remove_children(old)

    async def add_user(self, text: str) -> None:
        await self.end_reply()
        await self._add(UserMessage(Text(text), markup=False))

    async def add_notice(self, text: str, style: str = "") -> None:
        await self.end_reply()
        await self._add(Notice(Text(text, style=style)))

    async def add_widget(self, widget: Widget) -> None:
        await self.end_reply()
        await self._add(widget)

    async def append_text(self, text: str) -> None:
        """Stream model text into the current reply (a new one after any other widget)."""
        if self._reply is None:
            self._reasoning = None
            self._reply = AssistantReply()
            await self._add(self._reply)
            self._stream = Markdown.get_stream(self._reply)
        assert self._stream is not None
        await self._stream.write(text)

    async def append_reasoning(self, text: str) -> None:
        if self._reasoning is None:
            await self.end_reply()
            self._reasoning = Reasoning("")
            self._reasoning.text = ""
            await self._add(self._reasoning)
        self._reasoning.text += text
        self._reasoning.update(Text(self._reasoning.text, style="italic dim"))

    async def add_reply(self, markdown: str) -> None:
        """A whole reply at once (resuming a session)."""
        await self.end_reply()
        await self._add(AssistantReply(markdown))

    async def end_reply(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
        self._stream = None
        self._reply = None
        self._reasoning = None

    async def add_compaction(self, event: CompactionEvent) -> CompactionCard:
        card = CompactionCard(event)
        await self.add_widget(card)
        return card

    async def add_card(self, card: ToolCard) -> None:
        await self.end_reply()
        self.cards[card.call_id] = card
        await self._add(card)

    async def clear(self) -> None:
        await self.end_reply()
        self.cards.clear()
        await self.remove_children()

    @property
    def reply_source(self) -> str:
        return self._reply.source if self._reply is not None else ""
