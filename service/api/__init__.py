"""HTTP and WebSocket API: one router per resource, schemas, dependencies and error mapping."""
