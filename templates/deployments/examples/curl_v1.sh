curl -sS {{ v1_url }} \
  -H {{ appcode }} \
  -H "Content-Type: application/json" \
  -d {{ v1_body }}
