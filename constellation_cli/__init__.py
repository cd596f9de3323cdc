"""`constellation`: the end-user CLI, a client of the HTTP API. Of the server's code it imports only
the shared vocabulary (`constellation_core.vocabulary`: states, event types, defaults)."""
