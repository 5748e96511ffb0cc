"""The one request builder shared by the real-time call and the batch row.

Both paths must send the same bytes for the same item: the batch row embeds
``ExtractionRequest.body_json`` as is, and the real-time path hands the same
``body`` to the SDK, which serialises it exactly like :func:`dump_json`.
The static instructions come first and the page last, so OpenAI's prompt
caching can reuse the prefix; the page is wrapped in delimiters it cannot
close, because page content is untrusted data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import quote

from .config import Config
from .models import model_info, request_params
from .schema import response_format
from .slim import SlimPage
from .tokens import count_tokens, truncate_to_tokens

#: Tags of the user message; page text cannot contain them (see neutralise()).
DELIMITER_TAGS = ("untrusted_page", "structured_data", "visible_text")
#: "<" and its look-alikes (fullwidth, small form), and what may stand between one and a tag
#: name while a model still reads a tag: spaces, "/" and invisible format characters.
_TAG_OPENERS = "<\uff1c\ufe64"
_TAG_GAP = r"[\s/\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]*"
_DELIMITER_RE = re.compile(
    f"[{_TAG_OPENERS}]({_TAG_GAP})(" + "|".join(DELIMITER_TAGS) + ")", re.IGNORECASE
)
#: What a URL cannot hold as is in the url="..." attribute: it would end the attribute or
#: the tag. Percent-encoded, as a browser would; other URLs are sent byte for byte.
_URL_UNSAFE = re.compile(f'["<>\\s{_TAG_OPENERS[1:]}]')
#: tiktoken counts message contents; chat framing adds a few tokens per message.
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3
#: Room kept for the response_format schema and framing when sizing the page budget.
SAFETY_MARGIN_TOKENS = 256


class NoRoomForPage(ValueError):
    """The page budget leaves nothing of a page with content: the request would be paid
    for an empty page."""


def dump_json(value: Any) -> str:
    """JSON exactly as the openai SDK serialises request bodies (``openapi_dumps``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def neutralise(text: str) -> str:
    """Make delimiter tags in page content inert, so the page cannot end its own block."""
    return _DELIMITER_RE.sub(lambda match: "\u2039" + match.group(1) + match.group(2), text)


@dataclass(frozen=True)
class ExtractionRequest:
    """A chat-completions body ready for either path, with what it costs."""

    body: dict[str, Any]
    prompt_tokens: int
    truncated: bool
    #: Slimming's drop rules emptied the page, so it was slimmed without them.
    slim_fallback: bool = False

    @cached_property
    def body_json(self) -> str:
        return dump_json(self.body)

    @property
    def model(self) -> str:
        return str(self.body["model"])


class RequestBuilder:
    """Builds extraction requests for one crawler's configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._instruction_tokens = count_tokens(config.instructions, config.model)
        #: What the model's family takes besides the messages (see models.request_params).
        self.params = request_params(
            config.model, config.max_output_tokens, config.reasoning_effort
        )
        context = model_info(config.model, config.prices).context_window
        room = (
            context
            - self._instruction_tokens
            - self.params["max_completion_tokens"]
            - 2 * TOKENS_PER_MESSAGE
            - REPLY_PRIMING_TOKENS
            - SAFETY_MARGIN_TOKENS
        )
        self.max_page_tokens = min(config.max_input_tokens or room, room)

    def build(
        self, page: SlimPage, *, url: str | None, schema: dict[str, Any], schema_name: str
    ) -> ExtractionRequest:
        content, page_tokens, truncated = self._page_message(page, url)
        body = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.config.instructions},
                {"role": "user", "content": content},
            ],
            "response_format": response_format(schema, schema_name),
            **self.params,
        }
        prompt_tokens = (
            self._instruction_tokens + page_tokens + 2 * TOKENS_PER_MESSAGE + REPLY_PRIMING_TOKENS
        )
        return ExtractionRequest(body=body, prompt_tokens=prompt_tokens, truncated=truncated)

    def _page_message(self, page: SlimPage, url: str | None) -> tuple[str, int, bool]:
        """The user message within the page budget; structured data is kept before visible text."""
        model = self.config.model
        structured = neutralise(page.structured)
        text = neutralise(page.text)
        placeholders = 2  # the two "x" standing for the parts in the frame measured here
        frame = count_tokens(_user_message("x", "x", url), model) - placeholders
        budget = self.max_page_tokens - frame
        structured, structured_cut = truncate_to_tokens(structured, budget, model)
        budget -= count_tokens(structured, model)
        text, text_cut = truncate_to_tokens(text, max(budget, 0), model)
        if not structured and not text and (page.structured or page.text):
            raise NoRoomForPage(
                f"a page budget of {self.max_page_tokens} tokens leaves nothing of the page"
                " once its URL and delimiters are counted: raise LLM_EXTRACT_MAX_INPUT_TOKENS"
            )
        content = _user_message(structured, text, url)
        tokens = count_tokens(content, model)
        while tokens > self.max_page_tokens and text:
            # Tokens can merge or split where parts are joined: shave off the overshoot.
            over = tokens - self.max_page_tokens
            text, _ = truncate_to_tokens(text, count_tokens(text, model) - over, model)
            text_cut = True
            content = _user_message(structured, text, url)
            tokens = count_tokens(content, model)
        return content, tokens, structured_cut or text_cut or page.cut


def _user_message(structured: str, text: str, url: str | None) -> str:
    """The page between delimiters; both parts must already be neutralised."""
    parts = [f'<untrusted_page url="{_attribute(url)}">\n' if url else "<untrusted_page>\n"]
    if structured:
        parts.append(f"<structured_data>\n{structured}\n</structured_data>\n")
    if text:
        parts.append(f"<visible_text>\n{text}\n</visible_text>\n")
    parts.append("</untrusted_page>")
    return "".join(parts)


def _attribute(url: str) -> str:
    """The URL as the value of the url="..." attribute: the item's URL is untrusted too."""
    return _URL_UNSAFE.sub(lambda match: quote(match.group()), url)
