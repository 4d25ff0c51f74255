{% if from_env %}import os

{% endif %}from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)

result = client.embeddings.create(
    model={{ model }},
    input=[{{ embed_text }}, {{ embed_text_2 }}],
)

for item in result.data:
    print(f"input {item.index}: {len(item.embedding)} dimensions, first values {item.embedding[:3]}")
print(f"tokens: {result.usage.prompt_tokens}")
