{% if from_env %}import os

{% endif %}from langchain_openai import OpenAIEmbeddings

embeddings = OpenAIEmbeddings(
    model={{ model }},
    api_key={{ key }},
    base_url={{ base_url }},
    # Send the text as it is: the model's server tokenizes it (LangChain would otherwise
    # tokenize with OpenAI's tokenizer, which does not match a self-hosted model).
    check_embedding_ctx_length=False,
)

vectors = embeddings.embed_documents([{{ embed_text }}, {{ embed_text_2 }}])
query = embeddings.embed_query({{ embed_text }})
print(f"{len(vectors)} documents, {len(vectors[0])} dimensions; query vector of {len(query)}")
