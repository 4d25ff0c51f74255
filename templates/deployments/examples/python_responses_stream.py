{% if from_env %}import os

{% endif %}from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)

stream = client.responses.create(
    model={{ model }},
    instructions={{ system_prompt }},
    input={{ user_prompt }},
    stream=True,
)

for event in stream:
    if event.type == "response.output_text.delta":
        print(event.delta, end="", flush=True)
    elif event.type == "response.completed":
        usage = event.response.usage
        print(f"\ntokens: {usage.input_tokens} in, {usage.output_tokens} out")
