curl -sS -N {{ chat_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ stream_body }}
