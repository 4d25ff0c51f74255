{% if from_env %}import os

{% endif %}from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)

stream = client.chat.completions.create(
    model={{ model }},
    messages=[
        {"role": "system", "content": {{ system_prompt }}},
        {"role": "user", "content": {{ user_prompt }}},
    ],
    stream=True,
    # The last chunk then carries the token counts (and no choices).
    stream_options={"include_usage": True},
)

for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\ntokens: {chunk.usage.prompt_tokens} in, {chunk.usage.completion_tokens} out")
