{% if from_env %}import os

{% endif %}import anthropic

client = anthropic.Anthropic(
    api_key={{ key }},
    base_url={{ public_url }},
)

message = client.messages.create(
    model={{ model }},
    max_tokens=150,
    system={{ system_prompt }},
    messages=[{"role": "user", "content": {{ user_prompt }}}],
)

print(message.content[0].text)
print(f"tokens: {message.usage.input_tokens} in, {message.usage.output_tokens} out")
