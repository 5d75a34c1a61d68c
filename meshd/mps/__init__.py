"""Intel AMT CIRA: the Management Presence Server (MPS) listener."""
