curl -sS {{ chat_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ body }}
