"""Every error gen-linker raises, in one place, each with a message that names the input.

Errors about one record (`RecordError`) are caught by batch commands and written as error
records so the batch goes on; the others stop the command with the message.
"""
from __future__ import annotations


class GenLinkerError(Exception):
    """Base class: the message says what was wrong with which input and what to do."""


class RecordError(GenLinkerError):
    """One input record is unusable (malformed JSON, missing field, mention not in text...).

    Batch commands turn it into an output record `{"id", "error", "line"}` and continue.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 record_id: str | None = None) -> None:
        self.source, self.line, self.record_id = source, line, record_id
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.reason = message


class KnowledgeBaseError(GenLinkerError):
    """The knowledge base is missing, empty or unreadable, or an entity id is unknown."""


class DataFormatError(GenLinkerError):
    """A dataset file is not in any format gen-linker reads, or is not the format asked for."""


class ModelNotFoundError(GenLinkerError):
    """A model name resolves to neither a local folder, a packaged model, nor a reachable hub id."""


class PromptTemplateError(GenLinkerError):
    """A prompt template is missing or lacks a field the linker needs."""


class ResumeError(GenLinkerError):
    """An existing output file does not match the input it is asked to resume."""


class BackendError(GenLinkerError):
    """A generation backend is not installed, cannot serve the model, or was closed."""


class ImageError(GenLinkerError):
    """An image is missing, unreadable or corrupt; the mention is linked without it."""
