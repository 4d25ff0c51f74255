{% if from_env %}import os

{% endif %}from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)

completion = client.chat.completions.create(
    model={{ model }},
    messages=[
        {"role": "system", "content": {{ system_prompt }}},
        {"role": "user", "content": {{ user_prompt }}},
    ],
    temperature=0.7,
    max_tokens=150,
)

print(completion.choices[0].message.content)
print(f"tokens: {completion.usage.prompt_tokens} in, {completion.usage.completion_tokens} out")
