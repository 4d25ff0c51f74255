{% if from_env %}import os

{% endif %}from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)

response = client.responses.create(
    model={{ model }},
    instructions={{ system_prompt }},
    input={{ user_prompt }},
    max_output_tokens=150,
)

print(response.output_text)
print(f"tokens: {response.usage.input_tokens} in, {response.usage.output_tokens} out")
