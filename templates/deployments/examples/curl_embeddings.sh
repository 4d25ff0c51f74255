curl -sS {{ embeddings_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ embeddings_body }}
