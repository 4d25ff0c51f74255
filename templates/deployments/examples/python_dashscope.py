{% if from_env %}import os

{% endif %}import dashscope

dashscope.base_http_api_url = {{ dashscope_base }}

response = dashscope.Generation.call(
    api_key={{ key }},
    model={{ model }},
    messages=[
        {"role": "system", "content": {{ system_prompt }}},
        {"role": "user", "content": {{ user_prompt }}},
    ],
    result_format="message",
)

if response.status_code == 200:
    print(response.output.choices[0].message.content)
    print(f"tokens: {response.usage.input_tokens} in, {response.usage.output_tokens} out")
else:
    print(f"error {response.status_code} {response.code}: {response.message}")
