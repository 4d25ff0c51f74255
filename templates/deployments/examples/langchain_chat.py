{% if from_env %}import os

{% endif %}from langchain_openai import ChatOpenAI

llm = ChatOpenAI(
    model={{ model }},
    api_key={{ key }},
    base_url={{ base_url }},
    temperature=0.7,
)

reply = llm.invoke([
    ("system", {{ system_prompt }}),
    ("human", {{ user_prompt }}),
])

print(reply.content)
print(reply.usage_metadata)
