curl -sS {{ v2_url }} \
  -H {{ bearer }} \
  -H "Content-Type: application/json" \
  -d {{ body }}
