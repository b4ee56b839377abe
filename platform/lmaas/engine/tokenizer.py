"""Text ↔ tokens for the served model, and its chat template.

Reads a Hugging Face folder's ``tokenizer.json`` with the `tokenizers` library (no
transformers import: a runtime starts faster) and renders the chat template (from
``chat_template.jinja`` or ``tokenizer_config.json``) in a sandboxed Jinja environment
set up as transformers sets it up, so prompts are byte-identical to `apply_chat_template`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

__all__ = ["ChatTemplateError", "Tokenizer"]


class ChatTemplateError(ValueError):
    """The messages cannot be rendered into a prompt (the template refused them)."""


def _special(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, folder: Path | str) -> None:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        self.backend = HFTokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        self.bos_token = _special(config.get("bos_token"))
        self.eos_token = _special(config.get("eos_token"))
        template_file = folder / "chat_template.jinja"
        template = (
            template_file.read_text() if template_file.is_file() else config.get("chat_template")
        )
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template: str | None = template
        self._template: jinja2.Template | None = None
        self.eos_token_ids = self._eos_ids(folder)
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)

    def _eos_ids(self, folder: Path) -> set[int]:
        ids: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            value = _read_json(folder / name).get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        if self.eos_token is not None:
            token_id = self.backend.token_to_id(self.eos_token)
            if token_id is not None:
                ids.add(token_id)
        return ids

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token on its own, unique per token.

        A token holding part of a UTF-8 character is shown as its bytes, the way OpenAI
        shows them (``bytes:\\xe4\\xb8``), instead of a replacement character.
        """
        text = self.backend.decode([token_id], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text
        raw = self.backend.id_to_token(token_id) or ""
        data = _token_bytes(raw)
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data) if data else raw

    def render_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        if not self.chat_template:
            raise ChatTemplateError(
                "the served model has no chat template: send `prompt` instead of `messages`"
            )
        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the chat template refused the messages: {exc}") from exc

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of the rendered conversation, ending with the assistant's turn."""
        return self.encode(self.render_chat(messages), add_special_tokens=False)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_DECODER = _byte_decoder()


def _token_bytes(raw: str) -> bytes:
    """The bytes of a byte-level (GPT-2 style) or byte-fallback (``<0xE4>``) token."""
    if raw.startswith("<0x") and raw.endswith(">") and len(raw) == 6:
        return bytes([int(raw[3:5], 16)])
    if all(ch in _BYTE_DECODER for ch in raw):
        return bytes(_BYTE_DECODER[ch] for ch in raw)
    return b""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _environment() -> ImmutableSandboxedEnvironment:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env
