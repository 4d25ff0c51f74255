"""A deployment's own tokenizer (Hugging Face tokenizer.json), checked where it is set and loaded
where it is used (gateway.tokenizer). Local files only: nothing is fetched from a model hub."""

from __future__ import annotations

import os

MAX_PATH = 500


def load_tokenizer_file(path: str):
    """A `tokenizers.Tokenizer` from a local tokenizer.json; ValueError with a message for an operator."""
    from tokenizers import Tokenizer  # here: a native library most processes never need (few deployments set a file)

    if not os.path.isabs(path):
        raise ValueError("Give an absolute path to the tokenizer.json file.")
    if not os.path.isfile(path):
        raise ValueError(f"No tokenizer file at {path}.")
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({str(exc)[:200]}).") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def clean_tokenizer_path(value: str) -> str:
    """The path as stored: stripped, empty for none; raises ValueError unless it loads."""
    path = (value or "").strip()
    if not path:
        return ""
    if len(path) > MAX_PATH:
        raise ValueError(f"The path is longer than {MAX_PATH} characters.")
    load_tokenizer_file(path)
    return path
