import json
{% if from_env %}import os
{% endif %}
from openai import OpenAI

client = OpenAI(
    api_key={{ key }},
    base_url={{ base_url }},
)
MODEL = {{ model }}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
                "required": ["city"],
            },
        },
    }
]


def get_weather(city: str) -> dict:
    # Your own code goes here; the model only decides when to call it and with what.
    return {"city": city, "temperature_c": 18, "conditions": "light rain"}


messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
response = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
message = response.choices[0].message

# The model may ask for several tool calls, and ask again after seeing the results.
for _ in range(5):
    if not message.tool_calls:
        break
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments or "{}")
        result = get_weather(**arguments) if call.function.name == "get_weather" else {"error": "unknown tool"}
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    response = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    message = response.choices[0].message

print(message.content)
