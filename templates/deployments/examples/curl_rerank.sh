curl -sS {{ rerank_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ rerank_body }}
